"""The Inception network assembled from a spec, and the paper's presets.

One class, `Inception`, builds every variant: the stem, three 35×35 blocks,
a grid reduction, four 17×17 blocks, a grid reduction, two 8×8 blocks, the
auxiliary head on the last 17×17 block, and the classifier (Table 1 as
released in TF-slim `nets/inception_v3.py`; see
docs/paper_notes.md#table-1-and-the-released-code). Which block fills each
slot comes from the block registry, so a new factorization is a config
change, not an edit here; how many modules each grid has is one too
(`modules_per_grid`: Table 1 as printed has five at 17×17).

Presets (`PRESETS`):
  inception_v3                 the released architecture (= Table 3's last row,
                               "+ BN-auxiliary"); aux head off and 1000
                               classes make it exactly Keras's InceptionV3
  inception_v2                 Table 3's baseline: 7×7 stem, aux FC without BN
                               (also the "+ RMSProp" and "+ Label Smoothing" rows,
                               which change only the recipe)
  inception_v2_factorized_7x7  "+ Factorized 7×7": v3 stem, aux FC without BN
  inception_v3_rf151           Table 2: 151×151 receptive field
  inception_v3_rf79            Table 2: 79×79 receptive field
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax import blocks, convolution, layers
from inception_jax.errors import ConfigError
from inception_jax.layers import Builder

DEFAULT_BLOCKS = {
    'grid_35': 'inception_a',
    'reduce_35': 'reduction_a',
    'grid_17': 'inception_b',
    'reduce_17': 'reduction_b',
    'grid_8': 'inception_c',
}

# (endpoint, slot, slot kwargs at full width) — Table 1 as released (TF-slim
# `nets/inception_v3.py`; docs/paper_notes.md#filter-counts).
LAYOUT = (
    ('Mixed_5b', 'grid_35', dict(pool_features=32)),
    ('Mixed_5c', 'grid_35', dict(pool_features=64)),
    ('Mixed_5d', 'grid_35', dict(pool_features=64)),
    ('Mixed_6a', 'reduce_35', dict(out_features=768)),
    ('Mixed_6b', 'grid_17', dict(mid_features=128)),
    ('Mixed_6c', 'grid_17', dict(mid_features=160)),
    ('Mixed_6d', 'grid_17', dict(mid_features=160)),
    ('Mixed_6e', 'grid_17', dict(mid_features=192)),
    ('Mixed_7a', 'reduce_17', dict(out_features=1280)),
    ('Mixed_7b', 'grid_8', {}),
    ('Mixed_7c', 'grid_8', {}),
)
GRIDS = ('grid_35', 'grid_17', 'grid_8')
RELEASED_MODULES = (3, 4, 2)      # LAYOUT's modules on each of GRIDS
MAX_MODULES = 20                  # per grid (layout's names end in a letter)
GRID_REDUCTIONS = ('efficient', 'pool_conv', 'conv_pool')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64,
          'auto': None}


def compute_dtype(name: str):
  """`model.dtype` as a JAX type; 'auto' is bfloat16 on an accelerator (GPU,
  TPU: their matrix units run it at twice float32's rate or more) and
  float32 on a CPU."""
  if name == 'auto':
    return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class InceptionSpec:
  """Every architectural choice of the network; `config.model` holds these keys."""
  num_classes: int | None = 1000          # None: the dataset's, until `with_classes`
  stem: str = 'factorized'                 # 'factorized' | '7x7' | 'rf151' | 'rf79'
  blocks: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: dict(DEFAULT_BLOCKS))
  grid_reduction: str = 'efficient'        # Section 5: or 'pool_conv' | 'conv_pool'
  inception_a: str = 'released'            # or 'figure5' (Fig. 5 literally)
  factorization_n: int = 7                 # Fig. 6's n
  factorized_activation: str = 'relu'      # Section 3.1: or 'linear'
  modules_per_grid: tuple[int, int, int] = RELEASED_MODULES   # Table 1: modules at
                                           # 35×35, 17×17, 8×8 (`layout`; printed: 3, 5, 2)
  width_multiplier: float = 1.0            # TF-slim depth_multiplier
  min_depth: int = 16
  aux_head: bool = True
  aux_bn: bool = True                      # Fig. 8 / Table 3 "BN-auxiliary"
  dropout_rate: float = 0.2
  dtype: str = 'float32'                   # compute dtype; parameters float32
                                           # ('float64': float64 throughout, for numerical checks;
                                           # 'auto': bfloat16 on accelerators, float32 on CPU)
  conv_impl: str = 'auto'                  # how convolutions are computed: 'xla' | 'cpu_matmul'
                                           # (XLA:CPU's faster forms; same values up to rounding)
                                           # | 'auto' (cpu_matmul on a CPU, else xla), resolved
                                           # when the model is built (inception_jax/convolution.py)
  bn_momentum: float = 0.9997
  bn_epsilon: float = 1e-3
  bn_group_size: int = 0                   # ghost BN: examples per statistics group (0: whole batch)
  bn_update_per_group: bool = False        # moving averages: one update per group (the paper's
                                           # replicas), not one per step (layers.moving_update)
  # torchvision's port of the released model (interop.from_torchvision):
  bn_scale: bool = False                   # BatchNorm with a learned scale γ
  avg_pool_include_pad: bool = False       # the blocks' 3×3 average pools count
                                           # SAME's padded zeros (PyTorch's default)
  imports: str = ''                        # modules or .py files (comma-separated) that
                                           # register blocks or stems: imported with the
                                           # config (config_lib.import_user_modules)

  def __post_init__(self):
    object.__setattr__(self, 'blocks', dict(self.blocks))
    object.__setattr__(self, 'modules_per_grid', _module_counts(self.modules_per_grid))
    # `imports` was imported where the config was loaded
    # (`config_lib.import_user_modules`): the model sits below config loading.
    _check_choice('stem', self.stem, blocks.STEMS, _OWN_BLOCKS)
    _check_choice('grid_reduction', self.grid_reduction, GRID_REDUCTIONS)
    _check_choice('inception_a', self.inception_a, ('released', 'figure5'))
    _check_choice('factorized_activation', self.factorized_activation,
                  ('relu', 'linear'))
    _check_choice('dtype', self.dtype, DTYPES)
    _check_choice('conv_impl', self.conv_impl, convolution.CHOICES)
    unknown = set(self.blocks) - set(DEFAULT_BLOCKS)
    if unknown or set(self.blocks) != set(DEFAULT_BLOCKS):
      raise ConfigError(f'model.blocks must name exactly the slots '
                       f'{sorted(DEFAULT_BLOCKS)}; got {sorted(self.blocks)}')
    for slot, name in self.blocks.items():
      if name not in blocks.BLOCKS:
        raise ConfigError(f'model.blocks.{slot}: unknown block {name!r}; registered: '
                          f'{sorted(blocks.BLOCKS)}{_OWN_BLOCKS}')
    if self.num_classes is not None and self.num_classes < 1:
      raise ConfigError(f'num_classes must be >= 1, got {self.num_classes}')
    if not self.width_multiplier > 0:
      raise ConfigError(f'width_multiplier must be > 0, got {self.width_multiplier}')
    if self.bn_group_size < 0:
      raise ConfigError(f'bn_group_size must be >= 0, got {self.bn_group_size}')
    if self.min_depth < 1 or self.factorization_n < 1:
      raise ConfigError('min_depth and factorization_n must be >= 1')
    if not 0 <= self.dropout_rate < 1:
      raise ConfigError(f'dropout_rate must be in [0, 1), got {self.dropout_rate}')

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any], *,
                  dataset_classes: int | None = None) -> 'InceptionSpec':
    """Build from a (ConfigDict) mapping; unknown keys are a clear error.
    `num_classes=None` takes the dataset's class count, `dataset_classes`."""
    cfg = dict(cfg)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
      raise ConfigError(f'unknown model option(s) {unknown}; '
                       f'valid options: {sorted(fields)}')
    if 'blocks' in cfg:
      cfg['blocks'] = dict(cfg['blocks'])
    return cls(**cfg).with_classes(dataset_classes)

  def with_classes(self, dataset_classes: int | None) -> 'InceptionSpec':
    """This spec with `num_classes` None (follow the dataset) made the
    dataset's class count; a set count stays."""
    if self.num_classes is not None:
      return self
    if dataset_classes is None:
      raise ConfigError('model.num_classes is None (follow the dataset) but no '
                        'dataset class count was given')
    return dataclasses.replace(self, num_classes=dataset_classes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def slot_block(self, slot: str) -> str:
    if slot.startswith('reduce') and self.grid_reduction != 'efficient':
      return self.grid_reduction
    return self.blocks[slot]

  def builder(self, rngs: nnx.Rngs) -> Builder:
    return Builder(rngs=rngs, width_multiplier=self.width_multiplier,
                   min_depth=self.min_depth, dtype=compute_dtype(self.dtype),
                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                   bn_group_size=self.bn_group_size,
                   bn_update_per_group=self.bn_update_per_group,
                   bn_scale=self.bn_scale, avg_pool_include_pad=self.avg_pool_include_pad,
                   factorized_activation=self.factorized_activation,
                   factorization_n=self.factorization_n,
                   inception_a=self.inception_a,
                   conv_impl=convolution.resolve(self.conv_impl))

  @property
  def default_image_size(self) -> int:
    return blocks.STEM_IMAGE_SIZE[self.stem]


def _module_counts(counts) -> tuple[int, int, int]:
  try:
    counts = tuple(int(n) for n in counts)
  except (TypeError, ValueError):
    counts = ()
  if len(counts) != len(GRIDS) or not all(1 <= n <= MAX_MODULES for n in counts):
    raise ConfigError(f'model.modules_per_grid must be three counts from 1 to '
                      f'{MAX_MODULES} (35×35, 17×17, 8×8 grids), e.g. '
                      f'{RELEASED_MODULES} as released; got {counts or "something else"}')
  return counts


def layout(modules_per_grid=RELEASED_MODULES) -> tuple:
  """LAYOUT with `modules_per_grid` Inception modules on the 35×35, 17×17 and
  8×8 grids: a grid's first n released modules, or all of them followed by
  copies of its last one (the names go on: Mixed_6f, Mixed_6g, ...). The
  grid reductions stay. (3, 5, 2) is Table 1 as printed read literally: a
  fifth 17×17 module like Mixed_6e."""
  counts = dict(zip(GRIDS, _module_counts(modules_per_grid)))
  rows = []
  for slot, group in itertools.groupby(LAYOUT, key=lambda row: row[1]):
    group = list(group)
    if slot in counts:
      name, _, kwargs = group[-1]
      group += [(name[:-1] + chr(ord(name[-1]) + i), slot, kwargs)
                for i in range(1, counts[slot] - len(group) + 1)]
      group = group[:counts[slot]]
    rows += group
  return tuple(rows)


_OWN_BLOCKS = ('; a block or stem of your own is registered by the module or .py file '
               'that model.imports names, imported when the config is loaded')


def _check_choice(key, value, choices, hint=''):
  if value not in choices:
    raise ConfigError(f'model.{key} must be one of {sorted(choices)}, got {value!r}{hint}')


PRESETS: dict[str, dict[str, Any]] = {
    'inception_v3': {},
    'inception_v2': dict(stem='7x7', aux_bn=False),
    'inception_v2_factorized_7x7': dict(aux_bn=False),
    'inception_v3_rf151': dict(stem='rf151'),
    'inception_v3_rf79': dict(stem='rf79'),
}


def preset(name: str, **overrides) -> InceptionSpec:
  if name not in PRESETS:
    raise ConfigError(f'unknown model preset {name!r}; presets: {sorted(PRESETS)}')
  return InceptionSpec(**{**PRESETS[name], **overrides})


class ImageSizeError(ConfigError):
  """An input too small for the network's stride-2 layers."""


def _smallest_input(grid_size, limit: int = 1 << 20) -> int:
  """The smallest size s with grid_size(s) >= 1, in O(log s) probes.

  Every layer's `out_size` is non-decreasing in its input (SAME: ⌈n/s⌉,
  VALID: ⌊(n−k)/s⌋+1), so their composition is too: double until the grid is
  non-empty, then bisect. Exact, and it needs nothing of a registered block
  but its `out_size`."""
  hi = 1
  while grid_size(hi) < 1:
    if hi >= limit:
      raise ImageSizeError(f'no input up to {limit}×{limit} leaves a grid after '
                           'the stem and blocks')
    hi *= 2
  lo = hi // 2                 # grid_size(lo) < 1, or lo == 0
  while hi - lo > 1:           # invariant: grid_size(lo) < 1 <= grid_size(hi)
    mid = (lo + hi) // 2
    if grid_size(mid) >= 1:
      hi = mid
    else:
      lo = mid
  return hi


class Inception(nnx.Module):
  """Inception-v2/v3 from an `InceptionSpec`, built for `image_size` inputs.

  `model(x)` returns logits; `model(x, return_aux=True)` returns
  `(logits, aux_logits)` (aux_logits is None without the head). Dropout needs
  `rngs` (a key) in train mode; `model.eval()` switches BN to its moving
  statistics and turns dropout off.
  """

  def __init__(self, spec: InceptionSpec, *, image_size: int | None = None,
               rngs: nnx.Rngs):
    image_size = image_size or spec.default_image_size
    b = spec.builder(rngs)
    self.stem = blocks.STEMS[spec.stem](b)
    width = self.stem.out_features
    rows = layout(spec.modules_per_grid)
    self.block_names = tuple(name for name, _, _ in rows)
    # The auxiliary head sits on the last 17×17 module (Mixed_6e as released).
    self.aux_endpoint = [name for name, slot, _ in rows if slot == 'grid_17'][-1]
    for name, slot, kwargs in rows:
      block = blocks.get_block(spec.slot_block(slot))(width, b=b, **kwargs)
      setattr(self, name, block)
      width = block.out_features
    self.num_features = width
    self.min_image_size = _smallest_input(self.grid_size)
    if image_size < self.min_image_size:
      raise ImageSizeError(
          f'image size {image_size}×{image_size} is too small for this model '
          f"(stem {spec.stem!r}): the minimum is "
          f'{self.min_image_size}×{self.min_image_size}')
    aux_grid = self.grid_size(image_size, until=self.aux_endpoint)
    aux_width = getattr(self, self.aux_endpoint).out_features
    self.AuxLogits = (blocks.AuxHead(aux_width, spec.num_classes, b=b,
                                     grid_size=aux_grid, bn_fc=spec.aux_bn)
                      if spec.aux_head else None)
    self.Dropout = layers.Dropout(spec.dropout_rate)
    self.Logits = nnx.Linear(width, spec.num_classes, dtype=b.dtype,
                             param_dtype=layers.param_dtype(b.dtype),
                             kernel_init=nnx.initializers.variance_scaling(
                                 1.0, 'fan_in', 'truncated_normal'),
                             rngs=rngs)
    self.dtype = b.dtype
    self.conv_impl = b.conv_impl          # resolved: 'xla' or 'cpu_matmul'
    self.logits_dtype = layers.param_dtype(b.dtype)

  def grid_size(self, image_size: int, until: str | None = None) -> int:
    """Spatial size after the stem and blocks (up to endpoint `until`); 0 when
    some stride-2 layer has nothing left to reduce."""
    size = self.stem.out_size(image_size)
    for name in self.block_names:
      if size < 1:
        return 0
      size = getattr(self, name).out_size(size)
      if name == until:
        break
    return max(size, 0)

  def sublayers(self):
    heads = [self.Logits] if self.AuxLogits is None else [self.AuxLogits, self.Logits]
    return [self.stem, *(getattr(self, n) for n in self.block_names), *heads]

  def _check_input(self, x):
    h, w = x.shape[1:3]
    if min(h, w) < self.min_image_size:
      raise ImageSizeError(
          f'input {h}×{w} is too small for this model: the minimum is '
          f'{self.min_image_size}×{self.min_image_size}')

  def features(self, x, *, return_aux: bool = False):
    """The last grid before pooling (8×8×2048 at 299×299), and the aux logits."""
    self._check_input(x)
    x = self.stem(x.astype(self.dtype))
    aux = None
    for name in self.block_names:
      x = getattr(self, name)(x)
      if name == self.aux_endpoint and return_aux and self.AuxLogits is not None:
        aux = self.AuxLogits(x).astype(self.logits_dtype)
    return x, aux

  def __call__(self, x, *, return_aux: bool = False, rngs=None, rows=None):
    """`rows=(start, total)`: `x` is that slice of a larger batch (a
    micro-batch of gradient accumulation; `layers.Dropout`)."""
    x, aux = self.features(x, return_aux=return_aux)
    x = x.mean(axis=(1, 2))                      # AvgPool_1a_8x8 (global)
    x = self.Dropout(x, rngs=rngs, rows=rows)
    logits = self.Logits(x).astype(self.logits_dtype)
    return (logits, aux) if return_aux else logits


def min_image_size(spec: InceptionSpec) -> int:
  """Smallest square input every stride-2 layer of `spec` accepts (75 for v3)."""
  # Grid sizes depend only on layer geometry: probe a narrow, abstract copy.
  narrow = dataclasses.replace(spec, width_multiplier=1e-3, min_depth=1,
                               aux_head=False)
  return nnx.eval_shape(lambda: Inception(narrow, rngs=nnx.Rngs(0))).min_image_size


def create(spec: InceptionSpec | Mapping[str, Any], *, image_size: int | None = None,
           seed: int = 0) -> Inception:
  """Build a model from a spec or a `config.model` mapping."""
  if not isinstance(spec, InceptionSpec):
    spec = InceptionSpec.from_config(spec)
  return Inception(spec, image_size=image_size, rngs=nnx.Rngs(params=seed))
