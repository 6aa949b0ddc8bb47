"""The one place that bridges the supported Pythons (3.9-3.11).

`tomllib` joined the standard library in 3.11; before that the same parser ships as
`tomli` (tomllib was made from it: same functions, same TOMLDecodeError).
"""
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["tomllib"]
