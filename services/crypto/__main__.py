from services.crypto.server import main

main()
