"""The generic registry: decorator registration, lazy bundled names, entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest
from plugin_fixtures import install_distribution

from safescale.registry import (
    AmbiguousEntryPointError,
    EntryPointLoadError,
    Registry,
    load_object,
)


def _module(root, name: str, source: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(source))


def test_decorator_registers_and_refuses_a_second_object_under_a_name():
    things: Registry[object] = Registry("widget")

    @things.decorator("a")
    def a():
        return 1

    assert things.get("a") is a and things.name_of(a) == "a" and "a" in things
    assert things.register("a", a) is a  # the same object again is a no-op
    with pytest.raises(ValueError, match="widget 'a' is already registered by"):
        things.register("a", lambda: 2)
    assert things.get("missing") is None and things.names() == ["a"]
    assert things.unregister("a") is a and things.unregister("a") is None
    assert things.names() == [] and things.register("a", lambda: 2)() == 2  # free again


def test_bundled_names_are_listed_without_importing_them(tmp_path, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    _module(
        tmp_path,
        "widget_home",
        """\
        from safescale.registry import Registry

        THINGS = Registry(
            "widget",
            bundled={"obj": "lazy_widgets_obj:Widget", "self_registered": "lazy_widgets_self"},
        )
        """,
    )
    _module(tmp_path, "lazy_widgets_obj", "class Widget:\n    pass\n")
    _module(
        tmp_path,
        "lazy_widgets_self",
        "from widget_home import THINGS\n\nTHINGS.register('self_registered', 'by import')\n",
    )
    things = importlib.import_module("widget_home").THINGS
    assert things.names() == ["obj", "self_registered"]
    assert "lazy_widgets_obj" not in sys.modules and "lazy_widgets_self" not in sys.modules
    widget = things.get("obj")
    assert widget is load_object("lazy_widgets_obj:Widget") and things.name_of(widget) == "obj"
    assert things.get("self_registered") == "by import"
    assert set(things.registered()) == {"obj", "self_registered"}
    for name in ("widget_home", "lazy_widgets_obj", "lazy_widgets_self"):
        sys.modules.pop(name, None)


def test_entry_points_load_clash_and_fail_with_what_happened(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    group = "safescale.test_widgets"
    install_distribution(
        tmp_path,
        "widgets_one",
        "widgets_one",
        "VALUE = 1\n",
        f"[{group}]\none = widgets_one:VALUE\n",
    )
    install_distribution(
        tmp_path,
        "widgets_two",
        "widgets_two",
        "VALUE = 2\n",
        f"[{group}]\ntwice = widgets_two:VALUE\n",
    )
    install_distribution(
        tmp_path,
        "widgets_three",
        "widgets_three",
        "raise RuntimeError('broken plugin')\n",
        f"[{group}]\ntwice = widgets_three:VALUE\nbroken = widgets_three:VALUE\n",
    )
    things: Registry[object] = Registry("widget", group=group)
    assert things.names() == ["broken", "one", "twice"]
    assert things.load_entry_point("one") == 1
    assert things.load_entry_point("nothing") is None
    with pytest.raises(AmbiguousEntryPointError) as clash:
        things.load_entry_point("twice")
    assert sorted(clash.value.values) == ["widgets_three:VALUE", "widgets_two:VALUE"]
    with pytest.raises(EntryPointLoadError) as failed:
        things.load_entry_point("broken")
    assert isinstance(failed.value.cause, RuntimeError) and "broken plugin" in str(
        failed.value.cause
    )
    assert Registry("widget").names() == []  # no group: no entry points
