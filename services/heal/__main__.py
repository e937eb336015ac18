from services.heal.server import main

main()
