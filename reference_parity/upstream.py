"""Import the ORIGINAL PercePiano modules in isolation, from a checkout named by ``PERCEPIANO_UPSTREAM``.

Live side: needs that checkout. Only :mod:`reference_parity.capture`, :mod:`reference_parity.capture_training`,
the live tests and the side-by-side benchmarks import it; the recorded side (``recorded``, ``tolerances``,
``compare``, ``replay_compare``) never does.

The original code (GitHub JonghoKimSNU/PercePiano, commit e672299, model code in ``virtuoso/virtuoso/``) is a flat
directory of top-level modules (``utils``, ``module``, ``parser``, ``dataset``, ``model_utils``, ``encoder_score``,
...) that import each other by those bare names. :func:`load` imports them without letting those names leak into
(or clash with) anything else in ``sys.modules``:

1. every ``sys.modules`` entry whose top-level name is one of the original's module names is moved aside;
2. the original's code directory is put first on ``sys.path`` and the requested modules are imported;
3. every module the original brought in under one of its own names (and every shim below) is removed from
   ``sys.modules`` again; they stay reachable through the returned :class:`Upstream` object, and are also
   registered under a private prefix (``_percepiano_upstream_<hash>.<name>``) so tracebacks and ``inspect`` still
   find them;
4. ``sys.path`` and the entries moved aside in step 1 are restored (also when the import fails).

Original functions keep working afterwards because they resolve names through their own module globals, which
are kept. Nothing of the original is copied or modified: capture-time instrumentation wraps attributes of the
loaded module objects (see :mod:`reference_parity.capture`), never the files.

Shims (each installed only while importing, only if the real package is missing or broken, and removed again):

* ``numpy.lib.arraysetops`` -- removed in NumPy 2.0. ``utils.py`` line 1 imports ``isin`` from it (and never
  uses it); the shim module exposes ``numpy.isin`` under that name.
* ``omegaconf`` -- not a dependency of ours. ``utils.py`` imports ``OmegaConf`` and ``read_model_setting`` calls
  ``OmegaConf.create(yaml_dict)`` to get attribute access to the yml; the shim's ``create`` returns a recursive
  ``dict`` subclass with attribute get/set (missing keys raise ``AttributeError``, as OmegaConf >= 2.1 does).
* ``pretty_midi`` -- ``model_m2pf.py`` imports ``pyScoreParser.xml_utils`` / ``feature_to_performance``, which
  import ``pretty_midi`` at module level but use it only inside MIDI-writing functions never called here; the
  shim is an empty module (any attribute access raises ``AttributeError``).
* ``wandb`` and ``torch.utils.tensorboard`` -- only for :meth:`Upstream.training` (``train_m2pf.py`` imports
  ``logger.py``, which imports both); the parity capture runs the original with ``make_log=False`` so the
  logger is never constructed; the shims' ``SummaryWriter`` / ``init`` raise if called.

PyYAML, tqdm, scipy and scikit-learn must be installed for :meth:`Upstream.training` (``train_m2pf.py`` and
``dataset.py`` import them); the model modules need only torch, numpy, PyYAML and tqdm.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

from .recorded import UPSTREAM_ENV, sha256

EXPECTED_COMMIT = "e672299"
REPO_URL = "https://github.com/JonghoKimSNU/PercePiano"
CODE_DIR = Path("virtuoso") / "virtuoso"  # where the model modules live, relative to the checkout root
YML = Path("virtuoso") / "ymls" / "shared" / "label19" / "han_bigger256_concat.yml"
SCRIPTS_DIR = Path("virtuoso") / "scripts"
MARKER_FILES = ("UPSTREAM_COMMIT", ".upstream_commit")  # optional: a file holding the commit of a tarball checkout

CLONE_HINT = (
    f"get the original with `git clone {REPO_URL} && cd PercePiano && git checkout {EXPECTED_COMMIT}` "
    f"and set {UPSTREAM_ENV}=/path/to/PercePiano (the directory that contains `virtuoso/virtuoso/model_m2pf.py`)"
)

# sha256 of the key files at commit e672299 (checked against `git show e672299:<path>` when recorded). A checkout
# without .git (e.g. a tarball) is accepted only if these match; a git checkout must also be at that commit.
FINGERPRINTS = {
    "virtuoso/virtuoso/module.py": "227309f8a7b4cee009b9803c884db832cf654a6ab3c6ad51bd4590ea614d05e4",
    "virtuoso/virtuoso/utils.py": "4b797fe50af680b643901e1fc1df2196ca0a7f03c61adee15e0fd2de510d1a9a",
    "virtuoso/virtuoso/model_utils.py": "92064c1804033bed7e46592f556dd4959219399cc3f7d3579ee344642db0656d",
    "virtuoso/virtuoso/encoder_score.py": "7649f2d5298637e01bf5c1ad814309e1435c8383b58840a589c133cda1c4c117",
    "virtuoso/virtuoso/encoder_perf.py": "0d802f2447e753bc976a5fde7a60c8893f554937047544a4b965e13b0fae1ae7",
    "virtuoso/virtuoso/model_m2pf.py": "5a6424347fc1c9868d54ca7d7da2435501d80083951225ea5668b1633eca7cb1",
    "virtuoso/virtuoso/note_embedder.py": "2b2e95c577c159bef0a44a0f655b6f362b51d2232b69233066c51cec14bc5ba5",
    "virtuoso/virtuoso/parser.py": "d98cba0c0b3365762111a764453dcf2228d3bbe5fd3642908453f0afddf28e1f",
    "virtuoso/virtuoso/train_m2pf.py": "b372a10e342885c002ed9ea6e0e7c229a113889c0b52d8b0cdc7926f50faf6a5",
    "virtuoso/virtuoso/dataset.py": "e4ccd7af6f86fa02cceff32e5ddc45b48dbd61b1a3820fa257351ccc73a2d532",
    "virtuoso/ymls/shared/label19/han_bigger256_concat.yml": "7fc86ca718d0eebfc38d2039a847e1a0d2e9b3b160dd7b2cd9cb18c2ec4bfa1f",
}

MODEL_MODULES = ("module", "utils", "model_utils", "note_embedder", "encoder_score", "encoder_perf", "model_m2pf", "parser")
TRAINING_MODULES = ("dataset", "train_m2pf")


class UpstreamError(RuntimeError):
    """The original checkout is missing, incomplete, at the wrong commit, or cannot be imported."""


def resolve_root(path: str | os.PathLike | None = None) -> Path:
    """The checkout root: ``path``, else ``$PERCEPIANO_UPSTREAM``. Accepts the root or its ``virtuoso/virtuoso``."""
    raw = path if path is not None else os.environ.get(UPSTREAM_ENV)
    if not raw:
        raise UpstreamError(f"no original checkout given: {UPSTREAM_ENV} is not set; {CLONE_HINT}")
    root = Path(raw).expanduser().resolve()
    if not root.is_dir():
        raise UpstreamError(f"original checkout {str(root)!r} (from {UPSTREAM_ENV} or --upstream) is not a directory; {CLONE_HINT}")
    if not (root / CODE_DIR).is_dir() and (root / "model_m2pf.py").is_file() and root.parent.name == "virtuoso":
        root = root.parent.parent  # given .../virtuoso/virtuoso
    return root


def verify_checkout(root: Path) -> dict:
    """Check the checkout is commit e672299: git HEAD or a marker file when available, and the key-file sha256s.

    Returns ``{"method": ..., "commit": ..., "fingerprints": {relpath: sha256}}``; raises :class:`UpstreamError`.
    """
    missing = [rel for rel in FINGERPRINTS if not (root / rel).is_file()]
    if missing:
        raise UpstreamError(f"original checkout {str(root)!r} lacks {missing}; {CLONE_HINT}")
    commit, method = None, "sha256 of key files"
    if (root / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
            method = "git HEAD + sha256 of key files"
        except (OSError, subprocess.SubprocessError):
            commit = None
    if commit is None:
        for name in MARKER_FILES:
            if (root / name).is_file():
                words = (root / name).read_text().split()
                commit = words[0] if words else ""
                method = f"marker file {name} + sha256 of key files"
                break
    if commit is not None and not commit.startswith(EXPECTED_COMMIT):
        raise UpstreamError(
            f"original checkout {str(root)!r} is at commit {commit[:12]!r}, expected {EXPECTED_COMMIT}; "
            f"run `git -C {root} checkout {EXPECTED_COMMIT}` (or {CLONE_HINT})"
        )
    got = {rel: sha256(root / rel) for rel in FINGERPRINTS}
    bad = sorted(rel for rel in FINGERPRINTS if got[rel] != FINGERPRINTS[rel])
    if bad:
        raise UpstreamError(
            f"original checkout {str(root)!r}: {bad} differ from commit {EXPECTED_COMMIT} (modified files or another "
            f"commit); restore them (`git -C {root} checkout {EXPECTED_COMMIT} -- .`) or {CLONE_HINT}"
        )
    return {"method": method, "commit": commit or EXPECTED_COMMIT, "fingerprints": got}


# ----------------------------------------------------------------------------------------------------- shims


class _AttrDict(dict):
    """Minimal stand-in for an OmegaConf DictConfig: nested dicts with attribute get/set."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    @classmethod
    def wrap(cls, obj):
        if isinstance(obj, dict):
            return cls({k: cls.wrap(v) for k, v in obj.items()})
        if isinstance(obj, list):
            return [cls.wrap(v) for v in obj]
        return obj


class _RaisingModule(types.ModuleType):
    """A stub module: any attribute access raises, naming the shim."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__name__}.{name}: stubbed by reference_parity.upstream (not installed)")


def _can_import(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - e.g. ModuleNotFoundError, or tensorboard missing behind torch.utils
        return False


def _shims(training: bool) -> dict[str, types.ModuleType]:
    import numpy as np

    shims: dict[str, types.ModuleType] = {}
    if not _can_import("numpy.lib.arraysetops"):
        m = types.ModuleType("numpy.lib.arraysetops", "shim: NumPy >= 2 removed this module; isin = numpy.isin")
        m.isin = np.isin
        shims[m.__name__] = m
    if not _can_import("omegaconf"):
        m = types.ModuleType("omegaconf", "shim: OmegaConf.create -> attribute dict")
        m.OmegaConf = type("OmegaConf", (), {"create": staticmethod(_AttrDict.wrap)})
        shims[m.__name__] = m
    if not _can_import("pretty_midi"):
        shims["pretty_midi"] = _RaisingModule("pretty_midi", "shim: unused by the models")
    if training:
        if not _can_import("wandb"):
            shims["wandb"] = _RaisingModule("wandb", "shim: logging disabled (make_log=False)")
        if not _can_import("torch.utils.tensorboard"):
            m = types.ModuleType("torch.utils.tensorboard", "shim: logging disabled (make_log=False)")

            class SummaryWriter:  # noqa: D401 - a stub
                def __init__(self, *a, **k):
                    raise RuntimeError("torch.utils.tensorboard is stubbed by reference_parity.upstream")

            m.SummaryWriter = SummaryWriter
            shims[m.__name__] = m
    return shims


# ----------------------------------------------------------------------------------------------------- loading


def _own_names(code_dir: Path) -> set[str]:
    """Top-level module names the original defines (its ``*.py`` files and packages; not ``__main__``/``__init__``)."""
    names = {p.stem for p in code_dir.glob("*.py")}
    names |= {p.name for p in code_dir.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return {n for n in names if not n.startswith("__")}


@contextlib.contextmanager
def _isolated(code_dir: Path, loaded: dict[str, types.ModuleType], shims: dict[str, types.ModuleType]):
    """Make the original importable by its bare names for the duration of the block, then undo everything.

    Yields a dict that receives every module the block imported under one of the original's own names.
    """
    own = _own_names(code_dir)
    saved_path = list(sys.path)
    moved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in own}
    shadowed = {n: sys.modules.pop(n) for n in shims if n in sys.modules}
    before = set(sys.modules)
    sys.modules.update(loaded)
    sys.modules.update(shims)
    sys.path.insert(0, str(code_dir))
    importlib.invalidate_caches()
    new: dict[str, types.ModuleType] = {}
    try:
        yield new
    finally:
        for n in list(sys.modules):
            if n.split(".")[0] in own and n not in before:
                new[n] = sys.modules.pop(n)
        for n in shims:
            if sys.modules.get(n) is shims[n]:
                del sys.modules[n]
        sys.modules.update(shadowed)
        sys.modules.update(moved)
        sys.path[:] = saved_path
        importlib.invalidate_caches()


class Upstream:
    """The loaded original: modules by name (``up.model_m2pf``, ``up.mod('utils')``) plus small helpers."""

    def __init__(self, root: Path, verification: dict):
        self.root = root
        self.code_dir = root / CODE_DIR
        self.verification = verification
        self.commit = verification["commit"]
        self.modules: dict[str, types.ModuleType] = {}
        self.shims_used: list[str] = []
        self._prefix = "_percepiano_upstream_" + hashlib.sha1(str(root).encode()).hexdigest()[:8]

    # -- imports
    def _import(self, names, training=False):
        shims = _shims(training)
        self.shims_used = sorted(set(self.shims_used) | set(shims))
        try:
            with _isolated(self.code_dir, self.modules, shims) as new:
                for n in names:
                    importlib.import_module(n)
        except UpstreamError:
            raise
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] not in _own_names(self.code_dir):
                raise UpstreamError(
                    f"the original code needs the package {exc.name!r}, which is not installed: "
                    f"pip install 'percepiano[upstream]' (PyYAML, tqdm, scipy, scikit-learn)"
                ) from exc
            raise UpstreamError(
                f"importing the original modules {list(names)} from {str(self.code_dir)!r} failed: "
                f"{type(exc).__name__}: {exc}. Is this the original PercePiano checkout ({CLONE_HINT})?"
            ) from exc
        except Exception as exc:  # noqa: BLE001
            raise UpstreamError(
                f"importing the original modules {list(names)} from {str(self.code_dir)!r} failed: "
                f"{type(exc).__name__}: {exc}. Is this the original PercePiano checkout ({CLONE_HINT})?"
            ) from exc
        self.modules.update(new)
        for n, m in new.items():
            sys.modules.setdefault(f"{self._prefix}.{n}", m)

    def mod(self, name: str) -> types.ModuleType:
        if name not in self.modules:
            self._import([name], training=name in TRAINING_MODULES or name in ("logger",))
        return self.modules[name]

    def __getattr__(self, name):
        # only the original's own module names resolve (``up.utils``); anything else is a plain AttributeError
        if name.startswith("_") or name not in _own_names(self.__dict__["code_dir"]):
            raise AttributeError(name)
        return self.mod(name)

    def training(self) -> types.ModuleType:
        """The original ``train_m2pf`` module (imported lazily: needs tqdm, scipy, scikit-learn)."""
        if "train_m2pf" not in self.modules:
            self._import(TRAINING_MODULES, training=True)
        return self.modules["train_m2pf"]

    # -- helpers
    def read_yml(self):
        """The published yml through the original ``utils.read_model_setting`` (attribute-dict config)."""
        return self.mod("utils").read_model_setting(str(self.root / YML))

    def net_params(self, input_size: int, num_labels: int = 19, **sizes):
        """``nn_params`` of the published yml with ``input_size`` set as ``utils.handle_args`` does.

        ``sizes`` override fields the way our ModelConfig names them: note_size, voice_size, beat_size,
        measure_size (also sets ``encoder.size``, as in the yml where both are 256), note_layers, voice_layers,
        beat_layers, measure_layers, num_heads, dropout.
        """
        p = self.read_yml().nn_params
        p.input_size = int(input_size)
        p.num_label = int(num_labels)  # __main__.py sets net_param.num_label = args.num_labels
        for level in ("note", "voice", "beat", "measure"):
            if f"{level}_size" in sizes:
                p[level]["size"] = int(sizes.pop(f"{level}_size"))
            if f"{level}_layers" in sizes:
                p[level]["layer"] = int(sizes.pop(f"{level}_layers"))
        p.encoder["size"] = p.measure["size"]
        if "num_heads" in sizes:
            p.num_attention_head = int(sizes.pop("num_heads"))
        if "dropout" in sizes:
            p.drop_out = float(sizes.pop("dropout"))
        if sizes:
            raise TypeError(f"unknown size overrides {sorted(sizes)}")
        return p

    def build_model(self, net_params, level: str):
        """``VirtuosoNetMultiLevel(net_params, data_stats, multi_level=level)`` as ``__main__.py`` builds it."""
        data_stats = {"key_to_dim": {"input": {}}}  # MixEmbedder reads stats['key_to_dim']['input'] (unused keys)
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # the constructor prints the levels
            return self.mod("model_m2pf").VirtuosoNetMultiLevel(net_params, data_stats, multi_level=level)

    def collate(self, samples):
        """The original ``dataset.FeatureCollate`` on a list of 10-item samples (see :mod:`.batches`)."""
        return self.mod("dataset").FeatureCollate()(samples)


_CACHE: dict[Path, Upstream] = {}


def load(path: str | os.PathLike | None = None, *, verify: bool = True) -> Upstream:
    """Verify and import the original (cached per checkout). ``path`` defaults to ``$PERCEPIANO_UPSTREAM``."""
    root = resolve_root(path)
    if root in _CACHE:
        return _CACHE[root]
    verification = verify_checkout(root) if verify else {"method": "not verified", "commit": "unknown", "fingerprints": {}}
    up = Upstream(root, verification)
    up._import(MODEL_MODULES)
    _CACHE[root] = up
    return up


def load_or_say_why(path: str | os.PathLike | None, prog: str) -> Upstream | None:
    """:func:`load`, or None after printing why not (``prog: ...`` on stderr): the capture commands then exit 2."""
    try:
        return load(path)
    except UpstreamError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def available() -> bool:
    """True when ``$PERCEPIANO_UPSTREAM`` is set (live tests run; they fail loudly if it is wrong)."""
    return bool(os.environ.get(UPSTREAM_ENV))
