from services.storage.server import main

main()
