from sidedoor.cli.main import main

main()
