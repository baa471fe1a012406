"""Uploaded strategy code, checked without running it.

A tenant's strategy arrives as one Python module (``.py``) or a zip of modules. The
platform must never execute tenant code in its own processes (the gateway), so this
module only parses: `inspect_package` reads the source with `ast` and finds the classes
that subclass ``Strategy`` (directly, as ``Strategy`` or ``<module>.Strategy``, or through
another class of the package) and declare a ``name``. What it refuses, with `Invalid`:

* a file that is not UTF-8 Python or a zip, or is empty or larger than `MAX_PACKAGE_BYTES`;
* a zip with an absolute path, ``..``, a link, more than `MAX_ZIP_FILES` entries, more than
  `MAX_UNPACKED_BYTES` once unpacked, an entry that cannot be read (corrupt, encrypted, an
  unsupported compression), or no ``.py`` file;
* a syntax error in any module (the message names the file and line);
* no ``Strategy`` subclass with a literal ``name``, or two classes with the same name.

Parameters are validated where the code runs (the job), since the declared `Param`s are
Python expressions; the job reports a bad value as a failure with the reason.
"""

from __future__ import annotations

import ast
import hashlib
import io
import lzma
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from trading.errors import Invalid
from trading.strategy import NAME_RE

MAX_PACKAGE_BYTES = 1024 * 1024
MAX_ZIP_FILES = 200
MAX_UNPACKED_BYTES = 8 * 1024 * 1024
MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FIELD = "file"


@dataclass(frozen=True)
class FoundStrategy:
    """A Strategy subclass found in a package: where it is and the name it registers."""

    module: str  # dotted module path inside the package, e.g. "my_strategy" or "pkg.rules"
    class_name: str
    name: str

    def as_dict(self) -> dict[str, str]:
        return {"module": self.module, "class_name": self.class_name, "name": self.name}


@dataclass(frozen=True)
class PackageInfo:
    """What an upload holds: its kind, files (path → source bytes), digest and strategies."""

    kind: str  # "module" or "zip"
    files: dict[str, bytes]
    sha256: str
    strategies: tuple[FoundStrategy, ...]


def inspect_package(filename: str, content: bytes) -> PackageInfo:
    """Check an upload (see the module docstring) and return what it holds."""
    if not isinstance(content, bytes | bytearray) or not content:
        raise Invalid("the uploaded file is empty", field=FIELD)
    if len(content) > MAX_PACKAGE_BYTES:
        raise Invalid(f"the uploaded file is {len(content):,} bytes; the limit is "
                      f"{MAX_PACKAGE_BYTES:,}", field=FIELD)
    name = PurePosixPath(str(filename or "")).name
    if name.endswith(".zip") or content[:4] == b"PK\x03\x04":
        files = _unzip(bytes(content))
        kind = "zip"
    elif name.endswith(".py"):
        stem = name[:-3]
        if not MODULE_RE.fullmatch(stem):
            raise Invalid(f"{name!r} is not an importable module name", field="filename")
        files = {name: bytes(content)}
        kind = "module"
    else:
        raise Invalid("upload a Python module (.py) or a zip of modules (.zip)", field="filename")
    for path in files:
        if path.endswith(".py") and not all(MODULE_RE.fullmatch(part)
                                            for part in PurePosixPath(path).with_suffix("").parts):
            raise Invalid(f"{path} is not importable: every folder and module name must be a Python "
                          "identifier", field=FIELD)
        if path == "__init__.py":
            raise Invalid("a zip's modules go at its top level or in packages (folders); a top-level "
                          "__init__.py has no package name", field=FIELD)
    trees = {path: _parse(path, source) for path, source in files.items() if path.endswith(".py")}
    found = _strategies(trees)
    return PackageInfo(kind, files, hashlib.sha256(content).hexdigest(), found)


def _unzip(content: bytes) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        raise Invalid("the uploaded file is not a valid zip", field=FIELD) from None
    entries = [e for e in archive.infolist() if not e.is_dir()]
    if len(entries) > MAX_ZIP_FILES:
        raise Invalid(f"the zip holds {len(entries)} files; the limit is {MAX_ZIP_FILES}", field=FIELD)
    if sum(e.file_size for e in entries) > MAX_UNPACKED_BYTES:
        raise Invalid(f"the zip unpacks to more than {MAX_UNPACKED_BYTES:,} bytes", field=FIELD)
    files: dict[str, bytes] = {}
    for entry in entries:
        path = PurePosixPath(entry.filename)
        if entry.filename.startswith(("/", "\\")) or ".." in path.parts or ":" in entry.filename \
                or "\\" in entry.filename:
            raise Invalid(f"the zip entry {entry.filename!r} points outside the package", field=FIELD)
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise Invalid(f"the zip entry {entry.filename!r} is a link", field=FIELD)
        try:
            data = archive.read(entry)
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, zlib.error,
                lzma.LZMAError):  # bad CRC or stream, encrypted, an unsupported compression
            raise Invalid(f"the zip entry {entry.filename!r} cannot be read (corrupt, encrypted or "
                          "compressed with an unsupported method)", field=FIELD) from None
        if len(data) != entry.file_size:
            raise Invalid(f"the zip entry {entry.filename!r} is corrupt", field=FIELD)
        files[str(path)] = data
    if not any(p.endswith(".py") for p in files):
        raise Invalid("the zip holds no Python module (.py)", field=FIELD)
    return files


def _parse(path: str, source: bytes) -> ast.Module:
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{path} is not UTF-8 text", field=FIELD) from None
    try:
        return ast.parse(text, filename=path)
    except SyntaxError as exc:
        raise Invalid(f"syntax error in {path}, line {exc.lineno}: {exc.msg}", field=FIELD) from None


def module_name(path: str) -> str:
    """Return the dotted module of a package path: ``pkg/rules.py`` → ``pkg.rules``."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal_name(cls: ast.ClassDef) -> str | None:
    for stmt in cls.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        if any(isinstance(t, ast.Name) and t.id == "name" for t in targets) \
                and isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None


def _strategies(trees: dict[str, ast.Module]) -> tuple[FoundStrategy, ...]:
    classes = [(path, node) for path, tree in trees.items() for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef)]
    bases = {node.name: [b for b in (_base_name(x) for x in node.bases) if b] for _, node in classes}
    memo: dict[str, bool] = {}

    def is_strategy(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name == "Strategy":
            return True
        if name in seen or name not in bases:
            return False
        if name not in memo:
            memo[name] = any(is_strategy(b, seen | {name}) for b in bases[name])
        return memo[name]

    found: list[FoundStrategy] = []
    for path, node in classes:
        if node.name == "Strategy" or not is_strategy(node.name):
            continue
        name = _literal_name(node)
        if name is None:
            continue  # an abstract base of the package's strategies
        if not NAME_RE.fullmatch(name):
            raise Invalid(f"{path}: strategy class {node.name} has name {name!r}; a name is lower-case "
                          "snake case (letters, digits, underscores)", field=FIELD)
        found.append(FoundStrategy(module_name(path), node.name, name))
    if not found:
        raise Invalid("no Strategy subclass with a name was found: define a class that subclasses "
                      "trading.strategy.Strategy and sets name = \"...\"", field=FIELD)
    names = [f.name for f in found]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise Invalid(f"two strategy classes are named {duplicate!r}", field=FIELD)
    return tuple(sorted(found, key=lambda f: f.name))
