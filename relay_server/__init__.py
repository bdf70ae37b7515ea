"""hookrelay's relay server: ingest, stores, hub, websocket sessions and API.

Importing this package is cheap on purpose: the listener imports
``relay_server.protocol`` and nothing else of the server.
"""
