"""Uploaded strategy packages: what `inspect_package` finds, and what it refuses, without running code."""

from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

import pytest

from trading.errors import Invalid
from trading.packages import (
    MAX_PACKAGE_BYTES,
    MAX_UNPACKED_BYTES,
    MAX_ZIP_FILES,
    FoundStrategy,
    inspect_package,
    module_name,
)

STRATEGY = b'''"""A strategy of a tenant."""
from trading.strategy import Strategy


class Momentum(Strategy):
    name = "momentum"
'''


def zip_of(entries: dict[str, bytes] | list[tuple[zipfile.ZipInfo | str, bytes]],
           method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Return a zip of `entries` (name or ZipInfo → content), in order."""
    buf = io.BytesIO()
    items = entries.items() if isinstance(entries, dict) else entries
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in items:
            archive.writestr(name, data)
    return buf.getvalue()


def refused(filename: str, content: bytes) -> Invalid:
    with pytest.raises(Invalid) as caught:
        inspect_package(filename, content)
    return caught.value


# -- what a valid upload holds ---------------------------------------------------------------------


def test_a_single_module_with_one_strategy() -> None:
    info = inspect_package("momentum.py", STRATEGY)
    assert info.kind == "module"
    assert info.files == {"momentum.py": STRATEGY}
    assert info.sha256 == hashlib.sha256(STRATEGY).hexdigest()
    assert info.strategies == (FoundStrategy("momentum", "Momentum", "momentum"),)
    assert info.strategies[0].as_dict() == {"module": "momentum", "class_name": "Momentum",
                                            "name": "momentum"}


def test_the_filename_keeps_only_its_last_part() -> None:
    info = inspect_package("uploads/tenant/momentum.py", STRATEGY)
    assert list(info.files) == ["momentum.py"]
    assert info.strategies[0].module == "momentum"


def test_a_bytearray_is_read_like_bytes() -> None:
    content: Any = bytearray(STRATEGY)  # typed bytes, but a bytearray is read too
    info = inspect_package("momentum.py", content)
    assert info.files == {"momentum.py": STRATEGY}
    assert info.sha256 == hashlib.sha256(STRATEGY).hexdigest()


def test_a_strategy_through_an_intermediate_class_and_no_abstract_base() -> None:
    source = b'''
from trading.strategy import Strategy


class Base(Strategy):
    """Shared rules, no name: an abstract base."""

    def helper(self):
        return 1


class Fast(Base):
    name = "fast_rule"


class Slower(Fast):
    name: str = "slow_rule"


class NotAStrategy:
    name = "plain"
'''
    info = inspect_package("rules.py", source)
    # sorted by name; Base has no name and NotAStrategy does not subclass Strategy
    assert info.strategies == (FoundStrategy("rules", "Fast", "fast_rule"),
                               FoundStrategy("rules", "Slower", "slow_rule"))


def test_a_base_given_as_the_module_attribute() -> None:
    source = b'''
import trading.strategy


class Dotted(trading.strategy.Strategy):
    name = "dotted"
'''
    info = inspect_package("dotted.py", source)
    assert info.strategies == (FoundStrategy("dotted", "Dotted", "dotted"),)


def test_a_name_that_is_not_a_string_literal_does_not_count() -> None:
    source = b'''
from trading.strategy import Strategy

NAME = "computed"


class Computed(Strategy):
    name = NAME
'''
    err = refused("computed.py", source)
    assert err.field == "file"
    assert "no Strategy subclass with a name" in err.message


def test_a_zip_with_a_package() -> None:
    rules = b'''
from pkg.base import Base


class Rule(Base):
    name = "pkg_rule"
'''
    base = b"from trading.strategy import Strategy\n\n\nclass Base(Strategy):\n    pass\n"
    content = zip_of([("pkg/", b""), ("pkg/__init__.py", b""), ("pkg/base.py", base),
                      ("pkg/rules.py", rules), ("README.md", b"\xff not UTF-8, and not parsed")])
    info = inspect_package("bundle.zip", content)
    assert info.kind == "zip"
    assert set(info.files) == {"pkg/__init__.py", "pkg/base.py", "pkg/rules.py", "README.md"}
    assert info.files["pkg/rules.py"] == rules
    assert info.sha256 == hashlib.sha256(content).hexdigest()
    # Base subclasses Strategy in another module of the package but has no name
    assert info.strategies == (FoundStrategy("pkg.rules", "Rule", "pkg_rule"),)


def test_a_strategy_in_a_package_init() -> None:
    content = zip_of({"pkg/__init__.py": STRATEGY})
    assert inspect_package("pkg.zip", content).strategies == (
        FoundStrategy("pkg", "Momentum", "momentum"),)


def test_a_zip_is_recognised_by_its_content_whatever_its_name() -> None:
    info = inspect_package("upload.py", zip_of({"momentum.py": STRATEGY}))
    assert info.kind == "zip"
    assert info.strategies == (FoundStrategy("momentum", "Momentum", "momentum"),)


@pytest.mark.parametrize(("path", "module"), [
    ("momentum.py", "momentum"), ("pkg/rules.py", "pkg.rules"), ("pkg/__init__.py", "pkg"),
    ("a/b/c.py", "a.b.c"),
])
def test_module_name(path: str, module: str) -> None:
    assert module_name(path) == module


def test_a_file_of_exactly_the_limit_is_accepted() -> None:
    content = STRATEGY + b"#" * (MAX_PACKAGE_BYTES - len(STRATEGY))
    assert len(content) == MAX_PACKAGE_BYTES
    assert inspect_package("momentum.py", content).strategies[0].name == "momentum"


def test_a_zip_of_exactly_the_file_limit_is_accepted() -> None:
    entries = {f"extra_{i}.txt": b"x" for i in range(MAX_ZIP_FILES - 1)} | {"momentum.py": STRATEGY}
    assert len(inspect_package("many.zip", zip_of(entries)).files) == MAX_ZIP_FILES


# -- what is refused, and why ----------------------------------------------------------------------


def test_a_syntax_error_names_the_file_and_line() -> None:
    err = refused("broken.py", b"from trading.strategy import Strategy\n\nclass X(Strategy:\n    pass\n")
    assert err.field == "file"
    assert err.message.startswith("syntax error in broken.py, line 3")


def test_a_syntax_error_in_a_zip_names_the_module_path() -> None:
    content = zip_of({"pkg/__init__.py": STRATEGY, "pkg/rules.py": b"x = 1\ny = (\n"})
    err = refused("pkg.zip", content)
    assert err.field == "file"
    assert "syntax error in pkg/rules.py, line 2" in err.message


def test_no_strategy_subclass() -> None:
    err = refused("plain.py", b"class Plain:\n    name = 'plain'\n")
    assert err.field == "file"
    assert "no Strategy subclass with a name was found" in err.message


def test_an_empty_file() -> None:
    err = refused("empty.py", b"")
    assert err.field == "file"
    assert "empty" in err.message


def test_a_file_above_the_limit() -> None:
    err = refused("big.py", STRATEGY + b"#" * (MAX_PACKAGE_BYTES + 1 - len(STRATEGY)))
    assert err.field == "file"
    assert f"{MAX_PACKAGE_BYTES + 1:,} bytes" in err.message
    assert f"the limit is {MAX_PACKAGE_BYTES:,}" in err.message


@pytest.mark.parametrize("bad", ["MyStrategy", "with space", "9lives", "", "x" * 65])
def test_a_name_that_is_not_snake_case(bad: str) -> None:
    source = f"from trading.strategy import Strategy\n\nclass Bad(Strategy):\n    name = {bad!r}\n"
    err = refused("bad.py", source.encode())
    assert err.field == "file"
    assert "bad.py: strategy class Bad" in err.message
    assert repr(bad) in err.message
    assert "snake case" in err.message


def test_two_strategies_with_the_same_name() -> None:
    source = STRATEGY + b'\n\nclass Other(Strategy):\n    name = "momentum"\n'
    err = refused("twice.py", source)
    assert err.field == "file"
    assert "two strategy classes are named 'momentum'" in err.message


def test_two_strategies_with_the_same_name_in_different_modules() -> None:
    err = refused("two.zip", zip_of({"a.py": STRATEGY, "b.py": STRATEGY.replace(b"Momentum", b"Copy")}))
    assert err.field == "file"
    assert "'momentum'" in err.message


@pytest.mark.parametrize("filename", ["strategy.txt", "strategy.py.bak", "strategy", "", "zip", ".py.gz"])
def test_a_filename_that_is_neither_py_nor_zip(filename: str) -> None:
    err = refused(filename, STRATEGY)
    assert err.field == "filename"
    assert ".py" in err.message and ".zip" in err.message


@pytest.mark.parametrize("filename", ["my-strategy.py", "1st.py", "my strategy.py", ".py", "é.py"])
def test_a_module_filename_that_cannot_be_imported(filename: str) -> None:
    err = refused(filename, STRATEGY)
    assert err.field == "filename"
    assert f"{filename!r} is not an importable module name" in err.message


def test_a_module_that_is_not_utf8() -> None:
    err = refused("latin.py", b"# caf\xe9\n" + STRATEGY)
    assert err.field == "file"
    assert err.message == "latin.py is not UTF-8 text"


def test_a_zipped_module_that_is_not_utf8() -> None:
    err = refused("pkg.zip", zip_of({"ok.py": STRATEGY, "pkg/latin.py": b"# caf\xe9\n"}))
    assert err.field == "file"
    assert err.message == "pkg/latin.py is not UTF-8 text"


@pytest.mark.parametrize("entry", ["../x.py", "pkg/../../x.py", "/abs/x.py", "\\x.py", "pkg\\x.py",
                                   "C:/x.py"])
def test_a_zip_entry_outside_the_package(entry: str) -> None:
    content = zip_of([("momentum.py", STRATEGY), (zipfile.ZipInfo(entry), STRATEGY)])
    assert entry in zipfile.ZipFile(io.BytesIO(content)).namelist()  # the name is stored as given
    err = refused("evil.zip", content)
    assert err.field == "file"
    assert f"{entry!r} points outside the package" in err.message


def test_a_zip_entry_that_is_a_symlink() -> None:
    link = zipfile.ZipInfo("link.py")
    link.external_attr = 0o120777 << 16
    err = refused("link.zip", zip_of([("momentum.py", STRATEGY), (link, b"/etc/passwd")]))
    assert err.field == "file"
    assert "'link.py' is a link" in err.message


def test_a_zip_with_too_many_files() -> None:
    entries = {f"extra_{i}.txt": b"x" for i in range(MAX_ZIP_FILES)} | {"momentum.py": STRATEGY}
    err = refused("many.zip", zip_of(entries))
    assert err.field == "file"
    assert f"{MAX_ZIP_FILES + 1} files; the limit is {MAX_ZIP_FILES}" in err.message


def test_a_zip_that_unpacks_too_large() -> None:
    content = zip_of({"momentum.py": STRATEGY, "zeros.bin": bytes(MAX_UNPACKED_BYTES)})
    assert len(content) < MAX_PACKAGE_BYTES  # small packed, large unpacked
    err = refused("bomb.zip", content)
    assert err.field == "file"
    assert f"more than {MAX_UNPACKED_BYTES:,} bytes" in err.message


@pytest.mark.parametrize("content", [b"PK\x03\x04" + b"\x00" * 64, b"not a zip at all"])
def test_a_corrupt_zip(content: bytes) -> None:
    err = refused("broken.zip", content)
    assert err.field == "file"
    assert "not a valid zip" in err.message


def test_a_truncated_zip() -> None:
    err = refused("cut.zip", zip_of({"momentum.py": STRATEGY})[:-10])
    assert err.field == "file"
    assert "not a valid zip" in err.message


def _patched(content: bytes, local: dict[int, int], central: dict[int, int]) -> bytes:
    """Set bytes of the first local header and the first central directory entry."""
    data = bytearray(content)
    start = data.find(b"PK\x01\x02")
    for offset, value in local.items():
        data[offset] = value
    for offset, value in central.items():
        data[start + offset] = value
    return bytes(data)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                    zipfile.ZIP_LZMA])
def test_a_zip_entry_with_damaged_data(method: int) -> None:
    data = bytearray(zip_of({"momentum.py": STRATEGY}, method))
    entry = zipfile.ZipFile(io.BytesIO(data)).getinfo("momentum.py")
    data[30 + len("momentum.py") + entry.compress_size // 2] ^= 0xFF  # a byte amid the entry's data
    err = refused("damaged.zip", bytes(data))
    assert err.field == "file"
    assert "'momentum.py' cannot be read" in err.message


def test_an_encrypted_zip_entry() -> None:
    content = _patched(zip_of({"momentum.py": STRATEGY}, zipfile.ZIP_STORED),
                       local={6: 1}, central={8: 1})  # general purpose flag bit 0: encrypted
    err = refused("secret.zip", content)
    assert err.field == "file"
    assert "'momentum.py' cannot be read" in err.message


def test_a_zip_entry_with_an_unsupported_compression() -> None:
    content = _patched(zip_of({"momentum.py": STRATEGY}, zipfile.ZIP_STORED),
                       local={8: 99}, central={10: 99})  # method 99 (AES), unknown to zipfile
    err = refused("aes.zip", content)
    assert err.field == "file"
    assert "'momentum.py' cannot be read" in err.message


@pytest.mark.parametrize("entries", [{"README.md": b"# no code"}, {"pkg/": b"", "pkg/data.csv": b"a,b"}, {}])
def test_a_zip_without_a_python_module(entries: dict[str, bytes]) -> None:
    err = refused("nocode.zip", zip_of(entries))
    assert err.field == "file"
    assert "the zip holds no Python module (.py)" in err.message


def test_a_zip_with_modules_but_no_strategy() -> None:
    err = refused("plain.zip", zip_of({"pkg/__init__.py": b"", "pkg/util.py": b"def f():\n    return 1\n"}))
    assert err.field == "file"
    assert "no Strategy subclass" in err.message


def test_a_zip_module_path_must_be_importable() -> None:
    exc = refused("p.zip", zip_of({"pkg/my-rules.py": STRATEGY}))
    assert exc.field == "file" and "pkg/my-rules.py is not importable" in exc.message
    exc = refused("p.zip", zip_of({"__init__.py": STRATEGY}))
    assert exc.field == "file" and "top-level __init__.py" in exc.message
