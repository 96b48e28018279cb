"""Reader of Moment Tensor Potential files (``.mtp``) as MLIP-2 and MLIP-3 write them.

The file is text: a ``MTP`` line, ``version = 1.1.0``, then ``key = value`` lines, brace lists ``{...}`` and the
``radial_coeffs`` block (a ``a-b`` species-pair label followed by one brace list per radial function). The reader
accepts what MLIP-2/MLIP-3 accept: leading ``#`` comment lines, the optional ``potential_name``, ``scaling`` and
``potential_tag`` lines, a ``scaling`` inside the radial-basis block (folded into the global one, as MLIP-3 does),
and the old key names ``min_val``/``max_val``/``basis_size`` (and motep's ``min``/``max``/``size``).

Anything it cannot evaluate exactly is refused with :class:`MTPFormatError` naming the variant: untrained
templates, magnetic MTPs (``.mmtp``), MLIP-3 active-learning files with their binary selection block (``.almtp``),
radial bases other than ``RBChebyshev``, and keys foreign to the format (e.g. forks' ``zbl_repulsion``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED_VERSION = "1.1.0"
SUPPORTED_RADIAL_BASIS = "RBChebyshev"

#: Accepted spellings of each radial-basis key (MLIP-3 names, MLIP-2 era names, motep's short names).
_BASIS_KEYS = {
    "min_dist": "min_dist",
    "min_val": "min_dist",
    "min": "min_dist",
    "max_dist": "max_dist",
    "max_val": "max_dist",
    "max": "max_dist",
    "radial_basis_size": "radial_basis_size",
    "basis_size": "radial_basis_size",
    "size": "radial_basis_size",
}
_MAGNETIC_KEYS = {"magnetic_basis_type", "min_mag", "max_mag", "mag_basis_size"}
_TOP_KEYS = {
    "version",
    "potential_name",
    "scaling",
    "species_count",
    "potential_tag",
    "radial_basis_type",
    "radial_funcs_count",
    "alpha_moments_count",
    "alpha_index_basic_count",
    "alpha_index_basic",
    "alpha_index_times_count",
    "alpha_index_times",
    "alpha_scalar_moments",
    "alpha_moment_mapping",
    "species_coeffs",
    "moment_coeffs",
}
_TRAINED_KEYS = ("radial_coeffs", "species_coeffs", "moment_coeffs")


class MTPFormatError(ValueError):
    """An ``.mtp`` file that is malformed, or of a variant this reader refuses to evaluate."""


@dataclass(frozen=True)
class MTPFile:
    """The parameters of a trained, non-magnetic MTP with a ``RBChebyshev`` radial basis.

    Species are the integer types ``0 .. species_count - 1``; the file names no elements.
    """

    potential_name: str
    #: Global multiplier of the radial basis (the file's ``scaling`` times any basis-block ``scaling``).
    scaling: float
    species_count: int
    potential_tag: str
    radial_basis_type: str
    #: Lower end of the Chebyshev interval (not a cutoff: MLIP extrapolates the polynomials below it).
    min_dist: float
    #: The cutoff in Å: neighbours with r < max_dist contribute.
    max_dist: float
    radial_basis_size: int
    radial_funcs_count: int
    #: (S, S, F, R): ``[central species, neighbour species, radial function, Chebyshev index]``.
    radial_coeffs: np.ndarray
    alpha_moments_count: int
    #: (B, 4) int rows ``(mu, px, py, pz)``.
    alpha_index_basic: np.ndarray
    #: (T, 4) int rows ``(a, b, mult, c)``: ``M[c] += mult * M[a] * M[b]``, in file order.
    alpha_index_times: np.ndarray
    #: (K,) int: the moments whose coefficients are ``moment_coeffs``.
    alpha_moment_mapping: np.ndarray
    #: (S,) per-species energy offset in eV.
    species_coeffs: np.ndarray
    #: (K,) linear coefficients of the scalar moments.
    moment_coeffs: np.ndarray

    @property
    def level_sizes(self) -> dict[str, int]:
        """Sizes that identify the MTP level (radial functions, moments, basic moments, contractions, basis)."""
        return {
            "radial_funcs_count": self.radial_funcs_count,
            "alpha_moments_count": self.alpha_moments_count,
            "alpha_index_basic_count": len(self.alpha_index_basic),
            "alpha_index_times_count": len(self.alpha_index_times),
            "alpha_scalar_moments": len(self.alpha_moment_mapping),
        }


def read_mtp(path: str | Path) -> MTPFile:
    """Parse the ``.mtp`` file at ``path``; raise :class:`MTPFormatError` naming the problem or the variant."""
    path = Path(path)
    try:
        return parse_mtp(path.read_bytes())
    except MTPFormatError as error:
        raise MTPFormatError(f"{path.name}: {error}") from None


def parse_mtp(content: bytes | str) -> MTPFile:
    """Parse the contents of an ``.mtp`` file."""
    lines = _text_lines(content)
    entries, radial_rows, basis_scaling = _read_entries(lines)
    return _build(entries, radial_rows, basis_scaling)


def _text_lines(content: bytes | str) -> list[tuple[int, str]]:
    """Numbered, stripped, non-empty lines without ``#`` comments; refuse binary content."""
    raw = content.encode() if isinstance(content, str) else content
    if b"#MVS_v" in raw:
        raise MTPFormatError(
            "MLIP-3 active-learning file (.almtp) with a binary selection block (#MVS_v...): not supported; "
            "use the plain .mtp potential MLIP wrote beside it"
        )
    if b"\x00" in raw:
        raise MTPFormatError("binary content: not an .mtp text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MTPFormatError(f"not a UTF-8 text file ({error})") from None
    numbered = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in numbered if line and not line.startswith("#")]
    if not lines or lines[0][1] != "MTP":
        first = lines[0][1][:40] if lines else ""
        raise MTPFormatError(f"not an MTP file: the first line must be 'MTP', found {first!r}")
    return lines[1:]


def _read_entries(lines: list[tuple[int, str]]) -> tuple[dict[str, tuple[int, str]], list, float]:
    """Walk the lines: ``key = value`` entries (brace lists may span lines) and the ``radial_coeffs`` block."""
    entries: dict[str, tuple[int, str]] = {}
    radial_rows: list[tuple[int, str, list[str]]] = []  # (line number, pair label, brace lists)
    basis_scaling = 1.0
    index = 0
    while index < len(lines):
        number, line = lines[index]
        index += 1
        if line == "radial_coeffs":
            index = _read_radial_block(lines, index, entries, radial_rows)
            entries["radial_coeffs"] = (number, "")
            continue
        key, separator, value = (part.strip() for part in line.partition("="))
        if not separator:
            raise MTPFormatError(f"line {number}: expected 'key = value', found {line[:60]!r}")
        if key in _MAGNETIC_KEYS:
            raise MTPFormatError(f"line {number}: magnetic MTP ({key}; .mmtp): not supported")
        if value.startswith("{"):
            while value.count("{") > value.count("}") and index < len(lines):
                value += " " + lines[index][1]
                index += 1
        if key == "radial_basis_type" and value != SUPPORTED_RADIAL_BASIS:
            raise MTPFormatError(
                f"line {number}: radial basis {value!r} is not supported (only {SUPPORTED_RADIAL_BASIS})"
            )
        if key == "scaling" and "radial_basis_type" in entries:
            basis_scaling = _float(value, key, number)  # MLIP-3 folds the basis' own scaling into the global one
            continue
        key = _BASIS_KEYS.get(key, key) if "radial_basis_type" in entries else key
        if key not in _TOP_KEYS and key not in _BASIS_KEYS.values():
            raise MTPFormatError(f"line {number}: unknown key {key!r} (not part of the MLIP-2/MLIP-3 .mtp format)")
        if key in entries:
            raise MTPFormatError(f"line {number}: {key!r} is given twice")
        entries[key] = (number, value)
    return entries, radial_rows, basis_scaling


def _read_radial_block(
    lines: list[tuple[int, str]], index: int, entries: dict[str, tuple[int, str]], rows: list
) -> int:
    """Read the ``S*S`` pair blocks after ``radial_coeffs``; return the index of the next line."""
    species_count = _int_entry(entries, "species_count")
    funcs_count = _int_entry(entries, "radial_funcs_count")
    for position in range(species_count * species_count):
        if index >= len(lines):
            raise MTPFormatError("radial_coeffs ends early: fewer species-pair blocks than species_count²")
        number, label = lines[index]
        central, neighbour = divmod(position, species_count)
        if label != f"{central}-{neighbour}":
            raise MTPFormatError(
                f"line {number}: species-pair label {label!r} where '{central}-{neighbour}' belongs; pair labels "
                "that are not species indices in order (e.g. atomic numbers) are not supported"
            )
        lists = []
        for offset in range(1, funcs_count + 1):
            if index + offset >= len(lines) or not lines[index + offset][1].startswith("{"):
                raise MTPFormatError(
                    f"line {number}: pair {label!r} needs {funcs_count} coefficient lists (radial_funcs_count)"
                )
            lists.append(lines[index + offset][1])
        rows.append((number, label, lists))
        index += funcs_count + 1
    return index


def _build(entries: dict[str, tuple[int, str]], radial_rows: list, basis_scaling: float) -> MTPFile:
    missing_trained = [key for key in _TRAINED_KEYS if key not in entries]
    if len(missing_trained) == len(_TRAINED_KEYS):
        raise MTPFormatError(f"untrained MTP template (no {', '.join(missing_trained)}): train it with MLIP first")
    if missing_trained:
        raise MTPFormatError(f"incomplete trained MTP: {', '.join(missing_trained)} missing")
    version = _need(entries, "version")[1]
    if version != SUPPORTED_VERSION:
        raise MTPFormatError(f"version {version!r} is not supported (only {SUPPORTED_VERSION})")

    species_count = _int_entry(entries, "species_count")
    funcs_count = _int_entry(entries, "radial_funcs_count")
    basis_size = _int_entry(entries, "radial_basis_size")
    min_dist, max_dist = _float_entry(entries, "min_dist"), _float_entry(entries, "max_dist")
    if species_count < 1 or funcs_count < 1 or basis_size < 1:
        raise MTPFormatError("species_count, radial_funcs_count and radial_basis_size must be positive")
    if not 0 <= min_dist < max_dist:
        raise MTPFormatError(f"min_dist {min_dist} and max_dist {max_dist} do not satisfy 0 <= min < max")

    radial = np.empty((species_count, species_count, funcs_count, basis_size))
    for position, (number, label, lists) in enumerate(radial_rows):
        central, neighbour = divmod(position, species_count)
        for mu, text in enumerate(lists):
            values = _floats(text, "radial_coeffs", number)
            if len(values) != basis_size:
                raise MTPFormatError(
                    f"line {number}: pair {label} has {len(values)} coefficients per radial function, expected "
                    f"radial_basis_size = {basis_size}"
                )
            radial[central, neighbour, mu] = values

    moments_count = _int_entry(entries, "alpha_moments_count")
    basic = _index_rows(entries, "alpha_index_basic", 4)
    times = _index_rows(entries, "alpha_index_times", 4)
    number, text = _need(entries, "alpha_moment_mapping")
    mapping = np.asarray(_ints(text, "alpha_moment_mapping", number), dtype=np.int64).reshape(-1)
    species_coeffs = np.asarray(_float_list(entries, "species_coeffs"))
    moment_coeffs = np.asarray(_float_list(entries, "moment_coeffs"))

    _check_count(entries, "alpha_index_basic_count", len(basic))
    _check_count(entries, "alpha_index_times_count", len(times))
    _check_count(entries, "alpha_scalar_moments", len(mapping))
    if len(species_coeffs) != species_count:
        raise MTPFormatError(f"species_coeffs has {len(species_coeffs)} values, species_count is {species_count}")
    if len(moment_coeffs) != len(mapping):
        raise MTPFormatError(f"moment_coeffs has {len(moment_coeffs)} values, alpha_scalar_moments is {len(mapping)}")
    if len(basic) == 0 or len(basic) > moments_count:
        raise MTPFormatError(f"{len(basic)} basic moments do not fit alpha_moments_count = {moments_count}")
    if int(basic[:, 0].max()) + 1 != funcs_count or basic[:, 0].min() < 0 or basic[:, 1:].min() < 0:
        raise MTPFormatError("alpha_index_basic does not match radial_funcs_count (max mu + 1 must equal it)")
    if len(times) and (times[:, [0, 1, 3]].min() < 0 or times[:, [0, 1, 3]].max() >= moments_count):
        raise MTPFormatError(f"alpha_index_times refers to moments outside 0..{moments_count - 1}")
    if len(times) and times[:, 3].min() < len(basic):
        raise MTPFormatError("alpha_index_times writes into a basic moment")
    if mapping.min() < 0 or mapping.max() >= moments_count:
        raise MTPFormatError(f"alpha_moment_mapping refers to moments outside 0..{moments_count - 1}")

    scaling = _float_entry(entries, "scaling") if "scaling" in entries else 1.0
    return MTPFile(
        potential_name=entries.get("potential_name", (0, ""))[1],
        scaling=scaling * basis_scaling,
        species_count=species_count,
        potential_tag=entries.get("potential_tag", (0, ""))[1],
        radial_basis_type=_need(entries, "radial_basis_type")[1],
        min_dist=min_dist,
        max_dist=max_dist,
        radial_basis_size=basis_size,
        radial_funcs_count=funcs_count,
        radial_coeffs=radial,
        alpha_moments_count=moments_count,
        alpha_index_basic=basic,
        alpha_index_times=times,
        alpha_moment_mapping=mapping,
        species_coeffs=species_coeffs,
        moment_coeffs=moment_coeffs,
    )


def _need(entries: dict[str, tuple[int, str]], key: str) -> tuple[int, str]:
    if key not in entries:
        raise MTPFormatError(f"{key!r} is missing")
    return entries[key]


def _int_entry(entries: dict[str, tuple[int, str]], key: str) -> int:
    number, value = _need(entries, key)
    return _int(value, key, number)


def _float_list(entries: dict[str, tuple[int, str]], key: str) -> list[float]:
    number, value = _need(entries, key)
    return _floats(value, key, number)


def _float_entry(entries: dict[str, tuple[int, str]], key: str) -> float:
    number, value = _need(entries, key)
    return _float(value, key, number)


def _int(value: str, key: str, number: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise MTPFormatError(f"line {number}: {key} = {value[:40]!r} is not an integer") from None


def _float(value: str, key: str, number: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise MTPFormatError(f"line {number}: {key} = {value[:40]!r} is not a number") from None


def _brace_items(text: str, key: str, number: int) -> list[str]:
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise MTPFormatError(f"line {number}: {key} must be a brace list {{...}}")
    inner = inner[1:-1].strip()
    return [item.strip() for item in inner.split(",")] if inner else []


def _floats(text: str, key: str, number: int) -> list[float]:
    return [_float(item, key, number) for item in _brace_items(text, key, number)]


def _ints(text: str, key: str, number: int) -> list[int]:
    return [_int(item, key, number) for item in _brace_items(text, key, number)]


def _index_rows(entries: dict[str, tuple[int, str]], key: str, width: int) -> np.ndarray:
    """A brace list of brace lists of ``width`` integers, e.g. ``{{0, 1, 0, 0}, {1, 0, 0, 0}}``."""
    number, text = _need(entries, key)
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise MTPFormatError(f"line {number}: {key} must be a brace list {{...}}")
    rows = []
    for chunk in inner[1:-1].split("}"):
        chunk = chunk.strip().lstrip(",").strip()
        if not chunk:
            continue
        row = _ints(chunk + "}", key, number)
        if len(row) != width:
            raise MTPFormatError(f"line {number}: {key} rows must have {width} integers, found {row}")
        rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, width)


def _check_count(entries: dict[str, tuple[int, str]], key: str, actual: int) -> None:
    declared = _int_entry(entries, key)
    if declared != actual:
        raise MTPFormatError(f"{key} = {declared}, but the list has {actual} entries")


@dataclass
class CfgStructure:
    """One configuration of an MLIP ``.cfg`` file: what the extrapolation grade needs of it (mtp_grade.py)."""

    types: np.ndarray  # (n,) MTP species index of each atom
    positions: np.ndarray  # (n, 3) Å
    cell: np.ndarray | None  # (3, 3) Å, rows are lattice vectors; None for a molecule


def read_cfg(path: str | Path) -> list[CfgStructure]:
    """The configurations of an MLIP ``.cfg`` file (``BEGIN_CFG`` ... ``END_CFG``: ``Size``, an optional
    ``Supercell``, ``AtomData`` with ``type`` and ``cartes_x/y/z`` columns); energies and forces are not read."""
    lines = Path(path).read_text().splitlines()
    structures, current, index = [], None, 0
    while index < len(lines):
        words = lines[index].split()
        key = words[0].rstrip(":") if words else ""
        if key == "BEGIN_CFG":
            current = {"cell": None, "size": 0}
        elif key == "END_CFG" and current is not None:
            if "types" not in current:
                raise MTPFormatError(f"{path}: line {index + 1}: a configuration without AtomData")
            structures.append(CfgStructure(current["types"], current["positions"], current["cell"]))
            current = None
        elif current is not None and key == "Size":
            current["size"] = int(lines[index + 1])
            index += 1
        elif current is not None and key == "Supercell":
            current["cell"] = np.array([[float(v) for v in lines[index + k].split()] for k in (1, 2, 3)])
            index += 3
        elif current is not None and key == "AtomData":
            columns = {name: position for position, name in enumerate(words[1:])}
            if not {"type", "cartes_x", "cartes_y", "cartes_z"} <= set(columns):
                raise MTPFormatError(f"{path}: line {index + 1}: AtomData needs type and cartes_x/y/z columns")
            rows = np.array([[float(v) for v in lines[index + 1 + k].split()] for k in range(current["size"])])
            rows = rows.reshape(-1, len(columns))
            current["types"] = rows[:, columns["type"]].astype(np.int64)
            current["positions"] = rows[:, [columns["cartes_x"], columns["cartes_y"], columns["cartes_z"]]]
            index += current["size"]
        index += 1
    return structures
