"""Random recipes and command lines end in a clean error, never a crash or a hang."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gluon_tricks.cli import main
from gluon_tricks.errors import UserError
from gluon_tricks.recipe import load_recipe, valid_keys

KEYS = valid_keys() + ["epochs", "seed", "name", "bogus", "optim.bogus", "extends"]
VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=12), st.lists(st.integers(-5, 300), max_size=4),
                   st.lists(st.text(max_size=5), max_size=3),
                   st.sampled_from(["a.toml", "cosine", "step", "nag", "stitch_height", "dynamic", "128", ""]))


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode().replace("\\\\u", "\\u") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_random_recipes_load_or_fail_cleanly(tmp_path, entries):
    top, sections = [], {}
    for key, value in entries.items():
        sec, _, k = key.rpartition(".")
        (sections.setdefault(sec, []) if sec else top).append(f"{k or sec} = {toml_value(value)}")
    text = "\n".join(top) + "".join(f"\n[{s}]\n" + "\n".join(lines) for s, lines in sections.items()) + "\n"
    (tmp_path / "a.toml").write_text("epochs = 2\n")
    path = tmp_path / "r.toml"
    path.write_text(text)
    try:
        load_recipe(path)
    except UserError as e:
        assert "\n" not in str(e)


ARGS = st.lists(st.sampled_from(["train", "table", "tables", "recipes", "plot", "export", "schedule",
                                 "--set", "optim.lr=x", "epochs=-1", "--ctx", "gpu:9", "tpu", "--epochs", "0",
                                 "--format", "xml", "--seeds", "-3", "nowhere.toml", "followup/table99",
                                 "--resume", "--dtype", "float16", "=", "--out", "", "--help-me"]), max_size=7)


@settings(max_examples=150, deadline=None)
@given(ARGS)
def test_random_command_lines_fail_cleanly(argv):
    # Never allow a real training or table run: the fuzz is about argument handling.
    if argv[:1] in (["train"], ["plot"], ["schedule"]) and not any(a in argv for a in ("nowhere.toml", "followup/table99", "", "tpu")):
        argv = argv + ["nowhere.toml"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        assert e.code in (0, 2)
        return
    assert code in (0, 2)
