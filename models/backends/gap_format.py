"""Read QUIP/GAP XML potentials: the ``GAP_params`` block (e0 per element, the sparse GP of each descriptor) and the
top-level ``Potential`` element that says how the XML's potentials combine.

Hand-written with the standard library's XML parser because QUIP's own reader is Fortran (quippy) under an academic
non-commercial licence. What is read, as QUIP reads it (``gp_predict.F90``, ``IPModel_GAP.f95``):

* ``<Potential init_args="IP GAP ...">`` (a GAP alone) or ``Sum init_args_pot1={IP Glue} init_args_pot2={IP GAP}``
  (a GAP plus QUIP's Glue potential, ``<Glue_params>``): the parts are returned by name, the backend decides;
* ``<GAP_params gap_version=...>``: ``<GAP_data>`` with ``<e0 Z= value=>`` per element (or one ``e0`` attribute);
* ``<gpSparse>`` with one ``<gpCoordinates>`` per descriptor: ``signal_variance`` (δ), ``signal_mean`` (f0),
  ``covariance_type`` (1 ARD SE, 2 dot product), ``zeta`` (or, in older files, the single ``<theta>`` of a dot
  product), ``<theta>``, ``<descriptor>`` (the descriptor's argument string), ``<permutation>`` and the sparse
  points ``<sparseX i= alpha= sparseCutoff=>`` whose coordinates are inline (``<sparseX>`` text or
  ``<sparseX_slice start= end=>``) or, in older fits, in a separate text file (``sparseX_filename``: one number a
  line, point after point).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COVARIANCE_ARD_SE = 1
COVARIANCE_DOT_PRODUCT = 2
COVARIANCE_NAMES = {0: "none", 1: "ard_se", 2: "dot_product", 3: "bond_real_space", 4: "pp"}


class GapFormatError(ValueError):
    """A GAP XML file this reader cannot use; the message names the file and what is wrong."""


@dataclass
class SparseGP:
    """One ``gpCoordinates``: a descriptor and its sparse Gaussian process."""

    label: str
    descriptor: str  #: the descriptor's argument string, e.g. ``"soap l_max=4 n_max=4 ..."``
    dimensions: int
    delta: float  #: ``signal_variance``
    f0: float  #: ``signal_mean``
    covariance_type: int
    theta: np.ndarray  #: length scales (ARD SE)
    zeta: float  #: dot-product exponent
    n_permutations: int
    alpha: np.ndarray  #: (n_sparse,) weights
    sparse_cutoff: np.ndarray  #: (n_sparse,) ``sparseCutoff`` factors
    sparse_x: np.ndarray  #: (n_sparse, dimensions) sparse points
    sparse_file: str | None = None  #: the separate file the sparse points came from, if any

    @property
    def kind(self) -> str:
        """The descriptor's name: the first word of its argument string."""
        return self.descriptor.split(maxsplit=1)[0] if self.descriptor.strip() else ""


@dataclass
class GapModel:
    """A GAP potential: per-element e0 and one sparse GP per descriptor."""

    label: str
    xml_version: int  #: ``gap_version``: descriptor defaults depend on it
    e0: dict[int, float]
    gps: list[SparseGP]
    #: The top-level ``Potential``'s parts: ``["GAP"]`` or e.g. ``["Glue", "GAP"]`` for a ``Sum``.
    parts: list[str] = field(default_factory=lambda: ["GAP"])
    #: ``E_scale`` of the ``IP GAP`` init arguments.
    energy_scale: float = 1.0
    #: The XML root, for other parts' readers (Glue).
    root: ElementTree.Element | None = None


def read_gap(path: Path | str, sparse_file: Callable[[str], Path] | None = None) -> GapModel:
    """Read the GAP XML file at ``path``.

    ``sparse_file`` maps a ``sparseX_filename`` named in the XML to the path to read (checked by the caller, e.g.
    against a card's hashes); without it such a file is looked for beside the XML.
    """
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise GapFormatError(f"{path.name}: not a readable XML file ({error})") from error
    parts, gap_args = _potential_parts(root, path)
    label = parse_args(gap_args).get("label", "")
    params = [element for element in root.iter("GAP_params") if not label or element.get("label") == label]
    if not params:
        raise GapFormatError(f"{path.name}: no <GAP_params> block" + (f" with label {label!r}" if label else ""))
    block = params[0]
    data = block.find("GAP_data")
    if data is None:
        raise GapFormatError(f"{path.name}: <GAP_params> has no <GAP_data>")
    if data.get("do_pca", "F").strip().upper().startswith("T"):
        raise GapFormatError(f"{path.name}: GAP_data do_pca=T (PCA-transformed descriptors) is not supported")
    e0: dict[int, float] = {}
    if data.get("e0") is not None:
        e0 = {z: fortran_float(data.get("e0")) for z in range(1, 117)}
    for entry in data.iter("e0"):
        e0[int(_need(entry, "Z", path))] = fortran_float(_need(entry, "value", path))
    sparse = block.find("gpSparse")
    if sparse is None:
        raise GapFormatError(f"{path.name}: <GAP_params> has no <gpSparse>")
    resolve = sparse_file or (lambda name: path.parent / name)
    gps = [_read_coordinates(element, path, resolve) for element in sparse.findall("gpCoordinates")]
    if not gps:
        raise GapFormatError(f"{path.name}: <gpSparse> has no <gpCoordinates>")
    scale = float(parse_args(gap_args).get("E_scale", "1.0"))
    return GapModel(
        label=block.get("label", ""),
        xml_version=int(block.get("gap_version", "0") or 0),
        e0=e0,
        gps=gps,
        parts=parts,
        energy_scale=scale,
        root=root,
    )


def sparse_file_names(path: Path | str) -> list[str]:
    """The ``sparseX_filename`` of every ``gpCoordinates`` of the XML at ``path``, in file order."""
    root = ElementTree.parse(path).getroot()
    return [name for element in root.iter("gpCoordinates") if (name := element.get("sparseX_filename"))]


def parse_args(text: str) -> dict[str, str]:
    """QUIP's ``key=value`` argument strings: values may be ``{...}`` or quoted; a bare word is ``word=T``.

    ``"soap l_max=4 Z={8 1}"`` -> ``{"soap": "T", "l_max": "4", "Z": "8 1"}``.
    """
    result: dict[str, str] = {}
    for match in re.finditer(r'([^\s=]+)(?:\s*=\s*(\{[^}]*\}|"[^"]*"|\'[^\']*\'|[^\s]+))?', text):
        key, value = match.group(1), match.group(2)
        if value is None:
            result[key] = "T"
        else:
            result[key] = value[1:-1].strip() if value[0] in "{\"'" else value
    return result


def _potential_parts(root: ElementTree.Element, path: Path) -> tuple[list[str], str]:
    """The parts of the top-level Potential (``["GAP"]`` or ``["Glue", "GAP"]``) and the ``IP GAP`` arguments."""
    potential = root.find("Potential")
    if potential is None:  # a bare GAP file: the GAP alone
        return ["GAP"], ""
    init = potential.get("init_args", "").strip()
    if init.startswith("IP "):
        return [init.split()[1]], init
    if init.startswith("Sum"):
        pieces = re.findall(r"init_args_pot\d+\s*=\s*\{([^}]*)\}", init)
        parts = [piece.split()[1] for piece in pieces if piece.strip().startswith("IP ")]
        gap_args = next((piece for piece in pieces if piece.split()[:2] == ["IP", "GAP"]), "")
        if len(parts) == len(pieces) and pieces:
            return parts, gap_args
    raise GapFormatError(f"{path.name}: top-level Potential init_args={init!r} is not 'IP GAP' or a Sum of IPs")


def _read_coordinates(element: ElementTree.Element, path: Path, resolve: Callable[[str], Path]) -> SparseGP:
    label = element.get("label", "")
    where = f"{path.name}: gpCoordinates {label!r}"
    if not element.get("sparsified", "T").strip().upper().startswith("T"):
        raise GapFormatError(f"{where}: sparsified=F (a full GP) is not supported")
    dimensions = int(_need(element, "dimensions", path))
    covariance_type = int(_need(element, "covariance_type", path))
    n_sparse = int(_need(element, "n_sparseX", path))
    theta_text = element.findtext("theta") or ""
    theta = np.array([fortran_float(value) for value in theta_text.split()], dtype=np.float64)
    zeta = fortran_float(element.get("zeta")) if element.get("zeta") is not None else 0.0
    if covariance_type == COVARIANCE_DOT_PRODUCT and element.get("zeta") is None and theta.size:
        zeta, theta = float(theta[0]), np.zeros(0)  # older files keep zeta as the single theta
    alpha, cutoff = np.zeros(n_sparse), np.ones(n_sparse)
    points = np.zeros((n_sparse, dimensions))
    sparse_name = element.get("sparseX_filename")
    for entry in element.findall("sparseX"):
        index = int(_need(entry, "i", path)) - 1
        if not 0 <= index < n_sparse:
            raise GapFormatError(f"{where}: sparseX i={index + 1} outside 1..{n_sparse}")
        alpha[index] = fortran_float(_need(entry, "alpha", path))
        cutoff[index] = fortran_float(_need(entry, "sparseCutoff", path))
        if sparse_name is None:
            slices = entry.findall("sparseX_slice")
            if slices:
                for piece in slices:
                    start, end = int(_need(piece, "start", path)), int(_need(piece, "end", path))
                    points[index, start - 1 : end] = _numbers(piece.text, end - start + 1, where)
            else:
                points[index] = _numbers(entry.text, dimensions, where)
    if sparse_name is not None:
        values = _numbers_file(resolve(sparse_name), n_sparse * dimensions, where)
        points = values.reshape(n_sparse, dimensions)  # Fortran column order: point after point
    permutations = element.findall("permutation")
    return SparseGP(
        label=label,
        descriptor=(element.findtext("descriptor") or "").strip(),
        dimensions=dimensions,
        delta=fortran_float(_need(element, "signal_variance", path)),
        f0=fortran_float(element.get("signal_mean", "0")),
        covariance_type=covariance_type,
        theta=theta,
        zeta=zeta,
        n_permutations=max(1, len(permutations), int(element.get("n_permutations", "1"))),
        alpha=alpha,
        sparse_cutoff=cutoff,
        sparse_x=points,
        sparse_file=sparse_name,
    )


def _numbers(text: str | None, count: int, where: str) -> np.ndarray:
    values = np.array([fortran_float(value) for value in (text or "").split()], dtype=np.float64)
    if values.size != count:
        raise GapFormatError(f"{where}: a sparse point has {values.size} numbers, expected {count}")
    return values


def _numbers_file(path: Path, count: int, where: str) -> np.ndarray:
    try:
        values = np.array([fortran_float(value) for value in path.read_text().split()], dtype=np.float64)
    except OSError as error:
        raise GapFormatError(f"{where}: cannot read its sparse point file {path.name} ({error})") from error
    if values.size != count:
        raise GapFormatError(f"{where}: sparse point file {path.name} holds {values.size} numbers, expected {count}")
    return values


def fortran_float(text: str | None) -> float:
    """A Fortran real: ``.5``, ``1.0E+000`` and ``1.0D-3`` included."""
    return float(str(text).strip().replace("D", "E").replace("d", "e"))


def _need(element: ElementTree.Element, name: str, path: Path) -> str:
    value = element.get(name)
    if value is None:
        raise GapFormatError(f"{path.name}: <{element.tag}> has no {name} attribute")
    return value
