"""Build side of the offline install bundle (run on a connected build machine).

Not importable as ``packaging.*`` on purpose: the repository's ``packaging/`` folder must never
shadow the PyPI ``packaging`` library, so it has no ``__init__.py`` and ``build_bundle.py`` puts
this folder on ``sys.path`` itself.
"""
