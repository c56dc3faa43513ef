"""The page: what the household opens in a browser (see app.py for the routes, server.py for how it runs).

It reads the history through its own SQLite connections and the snapshot folder, and the live picture from a
slot the pipeline overwrites (live.py); its only writes are corrections (deliver/corrections.py), which the
service then tells on MQTT.
"""
