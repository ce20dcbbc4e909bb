"""``python -m api``: serve the API with the settings from the environment."""

from api.server import main

main()
