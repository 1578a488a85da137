"""Local runtime for spotkeeper: what `make demo` and the tests run instead of AWS and GPU instances.

Modules are imported on demand (e.g. `from spotkeeper_local.tgi_emulator import TgiEmulator`) so that
importing the package itself stays free of web-server dependencies.
"""
