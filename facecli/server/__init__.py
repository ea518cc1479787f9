"""server stage of facecli (see DESIGN.md section 2)."""
