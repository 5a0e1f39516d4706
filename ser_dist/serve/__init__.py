"""Serving a trained model over HTTP with Ray Serve (`app.py`) and the request checks it uses (`requests.py`).

Importing this package loads nothing heavy; import `ser_dist.serve.app` for the application.
"""
