from facecli.cli.app import main

main()
