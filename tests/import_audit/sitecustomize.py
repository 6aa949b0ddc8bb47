"""Records, in every Python process started with this folder on PYTHONPATH, whether
gluon_tricks's CUDA preload had run when mxnet was first imported (tests/test_import_order.py).

Python imports `sitecustomize` at start-up from sys.path, so the hook reaches every child
too (launch's roles, a table's row processes, bench scripts) through the inherited
PYTHONPATH. One line per process is appended to $GLUON_TRICKS_IMPORT_AUDIT/<pid>:
`<argv> <TAB> <preload ran before mxnet: True/False>`.
"""
import os
import sys

_OUT = os.environ.get("GLUON_TRICKS_IMPORT_AUDIT")


class _FirstMxnetImport:
    def find_spec(self, name, path=None, target=None):
        if name == "mxnet":
            sys.meta_path.remove(self)
            cuda_libs = sys.modules.get("gluon_tricks.cuda_libs")
            ran = getattr(cuda_libs, "RAN_BEFORE_MXNET", None) is True
            with open(os.path.join(_OUT, str(os.getpid())), "a") as f:
                f.write(f"{' '.join(sys.argv)[:200]}\t{ran}\n")
        return None  # the normal finders import it


if _OUT:
    sys.meta_path.insert(0, _FirstMxnetImport())
