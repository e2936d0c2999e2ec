"""The paper's factorized blocks, the stems, the auxiliary head, and a registry.

Filter counts are those of the released Inception-v3 (TF-slim
`nets/inception_v3.py`; docs/paper_notes.md#filter-counts); the branch names
follow the figures. Each block is a `Parallel` of named branches,
concatenated in the released code's order, so weights map one to one.

A new block registers under a name and is chosen from the config, e.g.::

    @blocks.register('my_grid_17')
    class MyBlock(layers.Parallel):
      def __init__(self, in_features, *, b, mid_features):
        super().__init__(...)

    config.model.blocks.grid_17 = 'my_grid_17'

A block receives its input width, the `Builder` `b`, and the keyword arguments
of its slot (see `SLOT_KWARGS`); it must set `out_features` (Parallel and
Sequential do) and provide `out_size(size)` for the spatial grid it returns.
"""

from __future__ import annotations

import warnings
from typing import Callable

from flax import nnx

from inception_jax.errors import ConfigError
from inception_jax.layers import (Builder, Parallel, Sequential, avgpool, conv,
                                  maxpool, param_dtype)

BLOCKS: dict[str, Callable[..., nnx.Module]] = {}
STEMS: dict[str, Callable[[Builder], Sequential]] = {}
STEM_IMAGE_SIZE: dict[str, int] = {}

# Keyword arguments each slot of the network passes to its block.
SLOT_KWARGS = {
    'grid_35': ('pool_features',),
    'reduce_35': ('out_features',),
    'grid_17': ('mid_features',),
    'reduce_17': ('out_features',),
    'grid_8': (),
}


def _warn_if_replacing(kind: str, registry: dict, name: str, new) -> None:
  old = registry.get(name)
  if old is not None and old is not new:
    # Re-running a notebook cell defines the class anew: the latest one wins.
    warnings.warn(f'{kind} {name!r} was registered to {old!r}; replaced by {new!r}',
                  stacklevel=3)


def register(name: str):
  """Decorator for a block class (or a function returning a module): make it
  selectable as `config.model.blocks.SLOT=name`. Registering a name again
  replaces the entry, with a warning."""
  def wrap(cls):
    _warn_if_replacing('block', BLOCKS, name, cls)
    BLOCKS[name] = cls
    return cls
  return wrap


def register_stem(name: str, image_size: int):
  """Function decorator: make a stem selectable as `config.model.stem=name`;
  `image_size` is the input it is designed for. Registering a name again
  replaces the entry, with a warning."""
  def wrap(fn):
    _warn_if_replacing('stem', STEMS, name, fn)
    STEMS[name] = fn
    STEM_IMAGE_SIZE[name] = image_size
    return fn
  return wrap


def get_block(name: str) -> Callable[..., nnx.Module]:
  if name not in BLOCKS:
    raise ConfigError(f'unknown block {name!r}; registered: {sorted(BLOCKS)}')
  return BLOCKS[name]


# --- Stems ---------------------------------------------------------------------

def _factorized_stem(b: Builder, first_stride: int) -> Sequential:
  return b.sequential(
      3,
      Conv2d_1a_3x3=conv(32, 3, first_stride, 'VALID'),
      Conv2d_2a_3x3=conv(32, 3, 1, 'VALID'),
      Conv2d_2b_3x3=conv(64, 3),
      MaxPool_3a_3x3=maxpool(3, 2),
      Conv2d_3b_1x1=conv(80, 1, 1, 'VALID'),
      Conv2d_4a_3x3=conv(192, 3, 1, 'VALID'),
      MaxPool_5a_3x3=maxpool(3, 2))


@register_stem('factorized', 299)
def factorized_stem(b: Builder) -> Sequential:
  """Inception-v3's stem (Table 1; the 7×7 factorized into three 3×3)."""
  return _factorized_stem(b, first_stride=2)


@register_stem('7x7', 299)
def stem_7x7(b: Builder) -> Sequential:
  """Table 3's Inception-v2 stem: one 7×7/2 convolution (299 → 147×147×64).

  The paper does not define it; this project's reading replaces the three
  3×3 convolutions of the factorized stem by the single 7×7 they factorize,
  keeping the 147×147×64 output so everything after it is unchanged.
  """
  return b.sequential(
      3,
      Conv2d_1a_7x7=conv(64, 7, 2, 'VALID'),
      MaxPool_3a_3x3=maxpool(3, 2),
      Conv2d_3b_1x1=conv(80, 1, 1, 'VALID'),
      Conv2d_4a_3x3=conv(192, 3, 1, 'VALID'),
      MaxPool_5a_3x3=maxpool(3, 2))


@register_stem('rf151', 151)
def stem_rf151(b: Builder) -> Sequential:
  """Table 2, 151×151 receptive field: "stride 1 and max pooling after the
  first layer". The first convolution has stride 1 instead of 2, so a 151×151
  input reaches the same 147×147 grid, and the rest, the same compute."""
  return _factorized_stem(b, first_stride=1)


@register_stem('rf79', 79)
def stem_rf79(b: Builder) -> Sequential:
  """Table 2, 79×79 receptive field: "stride 1 and no pooling after the first
  layer". The first convolution has stride 1, the first max-pool is dropped,
  and Conv2d_2b is VALID so a 79×79 input lands on the 35×35 grid; every
  block after the stem is then identical to v3's (≈5.25 G multiply-adds)."""
  return b.sequential(
      3,
      Conv2d_1a_3x3=conv(32, 3, 1, 'VALID'),
      Conv2d_2a_3x3=conv(32, 3, 1, 'VALID'),
      Conv2d_2b_3x3=conv(64, 3, 1, 'VALID'),
      Conv2d_3b_1x1=conv(80, 1, 1, 'VALID'),
      Conv2d_4a_3x3=conv(192, 3, 1, 'VALID'),
      MaxPool_5a_3x3=maxpool(3, 2))


# --- 35×35: Figure 5 -----------------------------------------------------------

@register('inception_a')
class InceptionA(Parallel):
  """Fig. 5: the 5×5 convolution factorized into two 3×3 (Mixed_5b–5d).

  `b.inception_a='released'` keeps the released code's extra 1×1 → 5×5
  branch; `'figure5'` builds the figure literally (1×1 → 3×3 there).
  """

  def __init__(self, in_features: int, *, b: Builder, pool_features: int):
    side_kernel = 5 if b.inception_a == 'released' else 3
    super().__init__(
        branch_1x1=b.tower(in_features, conv(64, 1)),
        branch_5x5=b.tower(in_features, conv(48, 1), conv(64, side_kernel)),
        branch_3x3dbl=b.tower(in_features, conv(64, 1),
                              conv(96, 3, factorized=True), conv(96, 3)),
        branch_pool=b.tower(in_features, avgpool(3), conv(pool_features, 1)))


# --- 17×17: Figure 6 -----------------------------------------------------------

@register('inception_b')
class InceptionB(Parallel):
  """Fig. 6: n×n factorized into 1×n then n×1 (Mixed_6b–6e; n = 7)."""

  def __init__(self, in_features: int, *, b: Builder, mid_features: int):
    n, c = b.factorization_n, mid_features
    super().__init__(
        branch_1x1=b.tower(in_features, conv(192, 1)),
        branch_nxn=b.tower(in_features, conv(c, 1),
                           conv(c, (1, n), factorized=True), conv(192, (n, 1))),
        branch_nxn_dbl=b.tower(in_features, conv(c, 1),
                               conv(c, (n, 1), factorized=True), conv(c, (1, n)),
                               conv(c, (n, 1), factorized=True), conv(192, (1, n))),
        branch_pool=b.tower(in_features, avgpool(3), conv(192, 1)))


# --- 8×8: Figure 7 -------------------------------------------------------------

def expanded_bank(b: Builder, in_features: int, *chain, features: int):
  """Fig. 7's expanded output: a chain whose last layer forks into a 1×3 and
  a 3×1 convolution, concatenated."""
  trunk = b.tower(in_features, *chain)
  fork = Parallel(
      Conv2d_1x3=b.layer(trunk.out_features, conv(features, (1, 3))),
      Conv2d_3x1=b.layer(trunk.out_features, conv(features, (3, 1))))
  return Sequential(trunk=trunk, fork=fork)


@register('inception_c')
class InceptionC(Parallel):
  """Fig. 7: expanded filter banks at the coarsest 8×8 grid (Mixed_7b, 7c)."""

  def __init__(self, in_features: int, *, b: Builder):
    super().__init__(
        branch_1x1=b.tower(in_features, conv(320, 1)),
        branch_3x3=expanded_bank(b, in_features, conv(384, 1), features=384),
        branch_3x3dbl=expanded_bank(b, in_features, conv(448, 1), conv(384, 3),
                                    features=384),
        branch_pool=b.tower(in_features, avgpool(3), conv(192, 1)))


# --- Grid reductions: Figures 9 and 10 ------------------------------------------

@register('reduction_a')
class ReductionA(Parallel):
  """Fig. 10: efficient 35→17 grid reduction (Mixed_6a): stride-2 convolution
  and pooling branches side by side. Its width is fixed by its branches
  (768 at full width); `out_features` is the slot's nominal width."""

  def __init__(self, in_features: int, *, b: Builder, out_features: int):
    del out_features
    super().__init__(
        branch_3x3=b.tower(in_features, conv(384, 3, 2, 'VALID')),
        branch_3x3dbl=b.tower(in_features, conv(64, 1), conv(96, 3),
                              conv(96, 3, 2, 'VALID')),
        branch_pool=b.tower(in_features, maxpool(3, 2)))


@register('reduction_b')
class ReductionB(Parallel):
  """Fig. 10: efficient 17→8 grid reduction (Mixed_7a). Width fixed by its
  branches (1280 at full width)."""

  def __init__(self, in_features: int, *, b: Builder, out_features: int):
    del out_features
    n = b.factorization_n
    super().__init__(
        branch_3x3=b.tower(in_features, conv(192, 1), conv(320, 3, 2, 'VALID')),
        branch_nxn_3x3=b.tower(in_features, conv(192, 1),
                               conv(192, (1, n), factorized=True),
                               conv(192, (n, 1)), conv(192, 3, 2, 'VALID')),
        branch_pool=b.tower(in_features, maxpool(3, 2)))


@register('pool_conv')
def pool_then_conv(in_features: int, *, b: Builder, out_features: int):
  """Fig. 9, left: pool first, then widen — cheap, but a representational
  bottleneck. Max-pool 3×3/2, then a 3×3 ConvBN to the slot's width."""
  return b.tower(in_features, maxpool(3, 2), conv(out_features, 3))


@register('conv_pool')
def conv_then_pool(in_features: int, *, b: Builder, out_features: int):
  """Fig. 9, right: widen at full resolution, then pool — no bottleneck, but
  about four times the compute. 3×3 ConvBN to the slot's width, then
  max-pool 3×3/2."""
  return b.tower(in_features, conv(out_features, 3), maxpool(3, 2))


# --- Auxiliary classifier: Figure 8 ---------------------------------------------

class AuxHead(nnx.Module):
  """Fig. 8: the auxiliary classifier on top of the last 17×17 block.

  avg-pool 5×5/3 → 1×1 conv (128) → 5×5 conv (768, the "fully connected"
  layer) → linear logits. `bn_fc=True` (Inception-v3, "BN-auxiliary")
  batch-normalizes the 768-wide layer; `False` (Inception-v2) gives it a bias
  instead. For grids smaller than 17×17 the pool and 5×5 kernels shrink to
  fit, as in TF-slim's `_reduced_kernel_size_for_small_input`.
  """

  def __init__(self, in_features: int, num_classes: int, *, b: Builder,
               grid_size: int, bn_fc: bool = True):
    pool = min(5, grid_size)
    pooled = (grid_size - pool) // 3 + 1
    fc_kernel = min(5, pooled)
    self.bn_fc = bn_fc
    self.tower = b.sequential(
        in_features,
        AvgPool_1a_5x5=avgpool(pool, 3, 'VALID'),
        Conv2d_1b_1x1=conv(128, 1),
        Conv2d_2a_5x5=conv(768, fc_kernel, 1, 'VALID', norm=bn_fc,
                           kernel_init=nnx.initializers.truncated_normal(0.01)))
    self.Logits = nnx.Linear(
        self.tower.out_features, num_classes, dtype=b.dtype,
        param_dtype=param_dtype(b.dtype),
        kernel_init=nnx.initializers.truncated_normal(0.001), rngs=b.rngs)

  def sublayers(self):
    return [self.tower, self.Logits]

  def __call__(self, x):
    x = self.tower(x).mean(axis=(1, 2))
    return self.Logits(x)
