"""The kiosk web app's pieces (`dkit.edge.kiosk`): one FastAPI router per concern, the shared per-app state and
the JSON errors. `dkit.edge.kiosk.server.create_app` builds the state and puts them together."""
