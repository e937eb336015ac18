from services.kms.server import main

main()
