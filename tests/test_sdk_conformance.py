"""The OpenCV FR cloud fake (tests/fake_seed_apis.FakeOpenCVFRCloud) held to the vendor's own Python
SDK, ``opencv-face-recognition`` 1.1.1 (a test-only dependency, pyproject ``dev``), issue 20.

The fake is served on 127.0.0.1 and driven through ``opencv.fr.FR`` (the SDK builds
``f"{backend_url}/{fragment}"`` URLs, sends ``x-api-key`` and parses every answer into its schema
classes), for every call the adapter (facecli/sinks/opencv_fr_cloud.py) makes or depends on:
collections create / list (search, paging) / get / update / delete; persons create with and without
an id / get / update / list (paging) / delete; search with and without a collection; the error answers
(401, 403, 404, 409 ``{code, message}``; 422 ``{"detail": [...]}``; 429 with an integer
``retry-after``). Then the adapter itself talks to the corrected fake: it must read what the SDK
reads (collection objects inside persons, ISO-8601 dates, thumbnails), and what it writes must be
readable by the SDK.

Where APIS.md and the SDK disagree the SDK's schema wins; the field limits come from the service's
published OpenAPI document (read by hand, see FakeOpenCVFRCloud), and the adapter is held to them
too (``max_results``; ids, names and notes too long fail one person). What neither pins down stays
an assumption of the fake (listed in FakeOpenCVFRCloud's docstring and in the README's targets
section).

No models: search scores come from a tiny pixel embedding (``pixel_embed``), enough to tell the
sample photos apart.
"""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from facecli.sinks.base import FacePayload, PersonPayload, SearchProbe

from .conftest import SAMPLES
from .fake_seed_apis import FakeOpenCVFRCloud
from .live_server import LiveServer

fr = pytest.importorskip("opencv.fr", reason="the vendor SDK (opencv-face-recognition, the dev extra) is not installed")
from opencv.fr.api_error import APIDataValidationError, APIError  # noqa: E402
from opencv.fr.collections.schemas import (  # noqa: E402
    Collection,
    CollectionBase,
    CollectionList,
    UpdateCollectionRequest,
)
from opencv.fr.persons.schemas import (  # noqa: E402
    Action,
    Person,
    PersonBase,
    PersonGender,
    PersonList,
    PersonOrderBy,
    UpdatePersonsRequest,
)
from opencv.fr.schemas import SortOrder  # noqa: E402
from opencv.fr.search.schemas import PersonSearchResult, SearchMode, SearchRequest  # noqa: E402

KEY = "sdk-conformance-key-3Zq"
GRACE, GRACE2, ASTRO, TINY = (SAMPLES / n for n in ("grace_hopper.jpg", "grace_hopper_2.jpg", "astronaut.jpg",
                                                    "tiny.jpg"))


def pixel_embed(data: bytes) -> np.ndarray | None:
    """A stand-in for the face models: the 16x16 grey image, centred and unit length. Survives the
    SDK's JPEG re-encoding (the same photo scores ~1.0) and tells different photos apart."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            v = np.asarray(img.convert("L").resize((16, 16)), dtype=np.float64).ravel()
    except Exception:  # noqa: BLE001 - not an image: no face
        return None
    v -= v.mean()
    return v / (np.linalg.norm(v) or 1.0)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # requests (the SDK's client) honours proxy variables
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    f = FakeOpenCVFRCloud(KEY, pixel_embed)
    with LiveServer(f) as srv:
        f.url = srv.url
        yield f


@pytest.fixture
def sdk(fake):
    return fr.FR(fake.url, KEY)


def is_collection(c, name=None):
    assert isinstance(c, Collection)
    assert isinstance(c.id, str) and c.id and isinstance(c.count, int)
    assert isinstance(c.create_date, datetime) and isinstance(c.modified_date, datetime)
    assert c.description is None or isinstance(c.description, str)
    if name is not None:
        assert c.name == name
    return c


def is_person(p, pid=None):
    assert isinstance(p, Person)
    assert isinstance(p.id, str) and p.id
    if pid is not None:
        assert p.id == pid
    assert isinstance(p.create_date, datetime) and isinstance(p.modified_date, datetime)
    assert p.gender is None or isinstance(p.gender, PersonGender)
    assert p.date_of_birth is None or isinstance(p.date_of_birth, datetime)
    for c in p.collections:
        is_collection(c)
    thumb = p.get_image(0)  # the thumbnails, decoded by the SDK
    assert isinstance(thumb, Image.Image) and min(thumb.size) > 0
    return p


def new_person(sdk, images, collections=(), **kw) -> Person:
    return is_person(sdk.persons.create(PersonBase(list(images), collections=list(collections), **kw)), kw.get("id"))


def api_error(call, status: int) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    err = info.value
    assert err.http_status_code == status
    assert isinstance(err.err_code, str) and err.err_code and isinstance(err.messsage, str)  # sic: the SDK's name
    return err


# -- collections --------------------------------------------------------------------------------


def test_collections_create_get_update_delete(sdk, fake):
    c = is_collection(sdk.collections.create(CollectionBase("staff", "the staff")), "staff")
    assert c.count == 0 and c.description == "the staff"
    got = is_collection(sdk.collections.get(c.id), "staff")
    assert (got.id, got.create_date) == (c.id, c.create_date)

    got.name, got.description = "staff-2024", "renamed"
    upd = is_collection(sdk.collections.update(got), "staff-2024")  # PATCH /collection {id, name, description, dates}
    assert upd.id == c.id and upd.description == "renamed" and upd.modified_date >= upd.create_date

    new_person(sdk, [GRACE], [upd], name="Grace Hopper")
    assert sdk.collections.get(c.id).count == 1  # count: persons in the collection

    assert sdk.collections.delete(c.id) is None
    api_error(lambda: sdk.collections.get(c.id), 404)
    api_error(lambda: sdk.collections.delete(c.id), 404)


def test_collections_list_search_and_paging(sdk):
    made = [sdk.collections.create(CollectionBase(f"team-{i}", f"team {i}")) for i in range(5)]
    sdk.collections.create(CollectionBase("visitors"))  # description None
    everything = sdk.collections.list(take=100)
    assert isinstance(everything, CollectionList) and everything.count == 6
    seen = []
    for skip in (0, 2, 4):
        page = sdk.collections.list(skip=skip, take=2, search="team")
        assert page.count == 5 and len(page.collections) == (2 if skip < 4 else 1)
        seen += [is_collection(c).id for c in page.collections]
    assert seen == [c.id for c in made]
    desc = sdk.collections.list(order=SortOrder.DESC, search="team")
    assert [c.name for c in desc.collections] == [f"team-{i}" for i in reversed(range(5))]
    assert sdk.collections.list(search="nobody-has-this").count == 0
    assert [c.name for c in sdk.collections.list(search="visitors").collections] == ["visitors"]


def test_collection_persons_add_and_remove(sdk):
    c = sdk.collections.create(CollectionBase("doors"))
    a = new_person(sdk, [GRACE], name="Grace Hopper")
    b = new_person(sdk, [ASTRO], name="Eileen Collins")
    res = sdk.collections.update_collection_persons(UpdateCollectionRequest(c.id, [a.id, b.id], []))
    assert res.collection_id == c.id and sdk.collections.get(c.id).count == 2
    sdk.collections.update_collection_persons(UpdateCollectionRequest(c.id, [], [a.id]))
    assert sdk.collections.get(c.id).count == 1
    assert [x.id for x in sdk.persons.get(b.id).collections] == [c.id] and sdk.persons.get(a.id).collections == []


# -- persons ------------------------------------------------------------------------------------


def test_person_create_with_and_without_id(sdk, fake):
    c = sdk.collections.create(CollectionBase("staff"))
    p = new_person(sdk, [GRACE, GRACE2], [c], id="grace", name="Grace Hopper", gender=PersonGender.F,
                   date_of_birth=datetime(1906, 12, 9), nationality="US", notes='{"department": "navy"}')
    assert (p.name, p.gender, p.date_of_birth.date().isoformat(), p.nationality) == \
        ("Grace Hopper", PersonGender.F, "1906-12-09", "US")
    assert [is_collection(x, "staff").id for x in p.collections] == [c.id]
    assert p.collections[0].count == 1
    assert json.loads(p.notes) == {"department": "navy"}
    assert p.get_image(1) is not None  # one thumbnail per image

    anon = new_person(sdk, [ASTRO], name="Eileen Collins")  # the SDK sends "id": null
    assert anon.id and anon.id != "grace" and anon.collections == [] and anon.gender is None
    assert set(fake.persons) == {"grace", anon.id}

    got = is_person(sdk.persons.get("grace"), "grace")
    assert got.create_date == p.create_date and [x.id for x in got.collections] == [c.id]
    api_error(lambda: sdk.persons.create(PersonBase([GRACE], id="grace", name="Again")), 409)


def test_person_update_partial(sdk, fake):
    c1 = sdk.collections.create(CollectionBase("one"))
    c2 = sdk.collections.create(CollectionBase("two"))
    new_person(sdk, [GRACE, GRACE2], [c1], id="grace", name="Grace Hopper", nationality="US")
    p = sdk.persons.get("grace")
    p.name = "Grace B. Hopper"
    upd = is_person(sdk.persons.update(p), "grace")  # PATCH /person {id, name}: nothing else sent
    assert upd.name == "Grace B. Hopper" and upd.nationality == "US"
    assert [x.id for x in upd.collections] == [c1.id] and fake.persons["grace"]["faces"] == 2

    upd.collections = [*upd.collections, c2]  # sent as ids, answered as objects
    upd.images = [ASTRO]  # replaces the faces
    again = is_person(sdk.persons.update(upd), "grace")
    assert [x.id for x in again.collections] == [c1.id, c2.id] and fake.persons["grace"]["faces"] == 1
    assert sdk.collections.get(c2.id).count == 1
    assert again.modified_date >= again.create_date

    ghost = sdk.persons.get("grace")
    ghost.id = "nobody"
    ghost.name = "Nobody"
    api_error(lambda: sdk.persons.update(ghost), 404)


def test_persons_list_paging_order_and_search(sdk):
    names = ["Dora", "Alan", "Edsger", "Barbara", "Claude"]
    for i, n in enumerate(names):
        new_person(sdk, [GRACE if i % 2 else ASTRO], id=f"p{i}" if i % 2 else None, name=n)
    everything = sdk.persons.list(take=100)
    assert isinstance(everything, PersonList) and everything.count == 5
    assert [p.name for p in everything.persons] == sorted(names)  # default order_by=name ASC
    seen = []
    for skip in (0, 2, 4):
        page = sdk.persons.list(skip=skip, take=2)
        assert page.count == 5 and len(page.persons) == (2 if skip < 4 else 1)
        seen += [is_person(p).name for p in page.persons]
    assert seen == sorted(names)
    desc = sdk.persons.list(order_by=PersonOrderBy.CREATE_DATE, order=SortOrder.DESC)
    assert [p.name for p in desc.persons] == list(reversed(names))
    found = sdk.persons.list(search="ar")
    assert found.count == 1 and [p.name for p in found.persons] == ["Barbara"]


def test_person_delete_and_bulk_delete(sdk, fake):
    c = sdk.collections.create(CollectionBase("staff"))
    ids = [new_person(sdk, [GRACE], [c], id=f"p{i}", name=f"P {i}").id for i in range(4)]
    assert sdk.persons.delete("p0") is None
    api_error(lambda: sdk.persons.get("p0"), 404)
    api_error(lambda: sdk.persons.delete("p0"), 404)
    assert sdk.collections.get(c.id).count == 3
    res = sdk.persons.update_persons(UpdatePersonsRequest(Action.DELETE, ids[1:3]))
    assert res.person_ids == ids[1:3] and set(fake.persons) == {"p3"}


# -- search -------------------------------------------------------------------------------------


def test_search_with_and_without_a_collection(sdk):
    c = sdk.collections.create(CollectionBase("staff"))
    new_person(sdk, [GRACE], [c], id="grace", name="Grace Hopper", notes='{"department": "navy"}')
    new_person(sdk, [ASTRO], id="astro", name="Eileen Collins")  # in no collection

    hits = sdk.search.search(SearchRequest([GRACE], collection_id=c.id, min_score=0.9, search_mode=SearchMode.ACCURATE))
    assert [type(h) for h in hits] == [PersonSearchResult]
    top = hits[0]
    assert is_person(top.person, "grace").name == "Grace Hopper" and isinstance(top.score, float)
    assert 0.9 <= top.score <= 1.0 and [x.id for x in top.person.collections] == [c.id]

    assert sdk.search.search(SearchRequest([ASTRO], collection_id=c.id, min_score=0.9)) == []
    anywhere = sdk.search.search(SearchRequest([ASTRO], min_score=0.9))  # collection_id null: every person
    assert [h.person.id for h in anywhere] == ["astro"]
    low = sdk.search.search(SearchRequest([ASTRO], min_score=0.0))
    assert [h.person.id for h in low][0] == "astro" and {h.person.id for h in low} == {"grace", "astro"}
    assert [h.score for h in low] == sorted((h.score for h in low), reverse=True)


# -- errors -------------------------------------------------------------------------------------


def test_auth_errors(fake):
    e = api_error(lambda: fr.FR(fake.url, None).collections.list(), 401)  # requests drops a None header
    assert e.err_code == "ERR_API_KEY_NOT_PRESENT"
    e = api_error(lambda: fr.FR(fake.url, "not-the-key").persons.get("x"), 403)
    assert e.err_code == "ERR_API_KEY_NOT_VALID"


def test_not_found_and_conflict(sdk):
    assert api_error(lambda: sdk.persons.get("nobody"), 404).err_code == "ERR_NOT_FOUND"
    assert api_error(lambda: sdk.collections.get("no-such-collection"), 404).err_code == "ERR_NOT_FOUND"
    assert api_error(lambda: sdk.persons.delete("nobody"), 404).err_code == "ERR_NOT_FOUND"
    new_person(sdk, [GRACE], id="grace", name="Grace Hopper")
    assert api_error(lambda: sdk.persons.create(PersonBase([ASTRO], id="grace", name="Other")), 409).err_code \
        == "ERR_ALREADY_EXISTS"


def test_validation_errors_carry_detail(sdk):
    with pytest.raises(APIDataValidationError) as info:
        sdk.persons.create(PersonBase([TINY], name="Tiny"))  # 60x70: the API wants >= 224x224
    detail = info.value.details["detail"]
    assert isinstance(detail, list) and detail
    for d in detail:
        assert isinstance(d["loc"], list) and isinstance(d["msg"], str) and isinstance(d["type"], str)
    assert any("224" in d["msg"] for d in detail)
    with pytest.raises(APIDataValidationError) as info:
        sdk.persons.create(PersonBase([GRACE], collections=[Collection("ghost", "ghost", None, 0, datetime.now(),
                                                                       datetime.now())], name="G"))
    assert info.value.details["detail"][0]["loc"][-1] == "collections"


def test_throttling_carries_an_integer_retry_after(sdk, fake):
    fake.throttle(1)
    e = api_error(lambda: sdk.collections.list(), 429)
    assert isinstance(e.retry_after, int) and e.retry_after >= 1  # the SDK reads int(retry-after)
    assert isinstance(sdk.collections.list(), CollectionList)  # and the next request goes through
    with pytest.raises(ValueError):
        fake.throttle(1, retry_after="0.3")  # the SDK could not parse it: the fake refuses to send it


def test_unknown_routes_answer_in_the_error_shape(fake):
    r = httpx.get(f"{fake.url}/no/such/route", headers={"x-api-key": KEY})
    assert r.status_code == 404 and set(r.json()) == {"code", "message"}


# -- the adapter against SDK-shaped answers -------------------------------------------------------


def jpeg(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture
def sink(fake, monkeypatch):
    from facecli.sinks.opencv_fr_cloud import OpenCVFRCloudSink

    monkeypatch.setenv("FACECLI_OPENCV_FR_CLOUD_URL", fake.url)
    s = OpenCVFRCloudSink("us", KEY, concurrency=1)
    yield s
    s.close()


def test_adapter_reads_sdk_shaped_answers(sdk, fake, sink):
    """A person the SDK made (collection objects, ISO dates, thumbnails) is found, updated into a
    second collection with its first one kept, and searched with its metadata; what the adapter
    writes, the SDK reads back."""
    other = sdk.collections.create(CollectionBase("other"))
    new_person(sdk, [GRACE], [other], id="grace", name="Grace Hopper")

    sink.ensure_collection("staff", create=True)
    (staff,) = [c for c in sdk.collections.list(search="staff").collections if c.name == "staff"]
    out = sink.upsert("staff", [
        PersonPayload("grace", "Grace Hopper", [FacePayload("g", "g", jpeg=jpeg(GRACE))], {"department": "navy"}),
        PersonPayload("astro", "Eileen Collins", [FacePayload("a", "a", jpeg=jpeg(ASTRO))], {"department": "nasa"},
                      gender="female", date_of_birth="1956-11-19", nationality="US"),
    ])
    assert [(o.person_id, o.status, o.action) for o in out] == [("grace", "enrolled", "updated"),
                                                                 ("astro", "enrolled", "created")], out
    assert fake.persons["grace"]["collections"] == [other.id, staff.id]  # the SDK-shaped answer was read

    grace = is_person(sdk.persons.get("grace"), "grace")
    assert sorted(c.name for c in grace.collections) == ["other", "staff"]
    astro = is_person(sdk.persons.get("astro"), "astro")
    assert (astro.gender, astro.date_of_birth, [c.id for c in astro.collections]) == \
        (PersonGender.F, datetime(1956, 11, 19), [staff.id])
    assert json.loads(astro.notes) == {"department": "nasa"}
    assert sdk.collections.get(staff.id).count == 2

    matches = sink.search("staff", SearchProbe(jpeg=jpeg(ASTRO)), k=3, min_score=0.9)
    assert [(m.person_id, m.person_name) for m in matches] == [("astro", "Eileen Collins")]
    assert matches[0].metadata == {"department": "nasa", "gender": "F", "date_of_birth": "1956-11-19",
                                   "nationality": "US"}


def test_adapter_refuses_invalid_ids_and_names_before_any_request(fake, sink):
    from facecli.errors import ConfigError

    sink.ensure_collection("staff", create=True)
    before = sum(fake.counts.values())
    out = sink.upsert("staff", [PersonPayload(bad, "X", [FacePayload("g", "g", jpeg=jpeg(GRACE))])
                                for bad in ("..", ".", "-rm", "a\x00b")])
    assert all(o.status == "failed" and o.reason == "INVALID_ROW" for o in out), out
    for bad in ("..", "CON", "a/b"):
        with pytest.raises(ConfigError):
            sink.ensure_collection(bad, create=True)
    assert sum(fake.counts.values()) == before and fake.persons == {}


def test_thumbnails_are_small_jpegs(sdk, fake):
    new_person(sdk, [GRACE], id="grace", name="Grace Hopper")
    r = httpx.get(f"{fake.url}/person/grace", headers={"x-api-key": KEY}).json()
    assert set(r) >= {"id", "name", "gender", "date_of_birth", "nationality", "collections", "notes", "thumbnails",
                      "create_date", "modified_date"}
    (t,) = r["thumbnails"]
    with Image.open(io.BytesIO(base64.b64decode(t["thumbnail"]))) as img:
        assert img.format == "JPEG" and max(img.size) <= 224
    assert datetime.fromisoformat(r["create_date"]).tzinfo is not None  # ISO-8601 with an offset


def test_adapter_asks_for_k_results(sdk, sink):
    """The service answers 10 matches unless ``max_results`` says otherwise (OpenAPI default)."""
    sink.ensure_collection("staff", create=True)
    out = sink.upsert("staff", [PersonPayload(f"p{i:02d}", f"P {i}", [FacePayload("g", "g", jpeg=jpeg(GRACE))])
                                for i in range(12)])
    assert all(o.status == "enrolled" for o in out), out
    assert len(sink.search("staff", SearchProbe(jpeg=jpeg(GRACE)), k=12, min_score=0.9)) == 12
    assert len(sink.search("staff", SearchProbe(jpeg=jpeg(GRACE)), k=3, min_score=0.9)) == 3


def test_adapter_service_limits_fail_one_person_or_the_collection(fake, sink):
    """Ids and names over 100 characters and notes over 500 (the OpenAPI document's limits, tighter
    than facecli's own rules) fail that person alone with the service's words; a collection name
    over 50 ends the run with them."""
    from facecli.errors import TargetError

    sink.ensure_collection("staff", create=True)
    face = [FacePayload("g", "g", jpeg=jpeg(GRACE))]
    out = sink.upsert("staff", [PersonPayload("x" * 101, "Long Id", face),
                                PersonPayload("chatty", "Chatty", face, {"bio": "y" * 600}),
                                PersonPayload("fine", "Fine", face, {"bio": "short"})])
    assert [(o.status, o.reason) for o in out] == [("failed", "SERVER_REJECTED")] * 2 + [("enrolled", None)], out
    assert out[0].message.startswith("id:") and out[1].message.startswith("notes:")
    assert set(fake.persons) == {"fine"}
    with pytest.raises(TargetError, match="name"):
        sink.ensure_collection("c" * 51, create=True)  # facecli allows 64
