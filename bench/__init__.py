"""`make bench`: what users feel from spotkeeper, measured side by side with the alternative they would pick.

``bench/run.py`` runs every part and writes ``build/bench/results.json``; each module measures one thing and
returns plain dictionaries, so the smoke test can run the same code in a tiny configuration.
"""
