from coto_tools.cli import main

main()
