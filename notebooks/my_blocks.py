"""A new 35×35 block, as a user of the project would write one: Fig. 5's 3×3
convolutions factorized once more, each into a 1×3 then a 3×1 (the
asymmetric factorization of Section 3.2 and Fig. 3).

Section 3.2 remarks that asymmetric factorization "does not work well on
early layers" and gives "very good results on medium grid-sizes" (12 to 20);
the released model uses it at 17×17 only. `inception_a_asym` tries it at
35×35. notebooks/02_new_factorization.ipynb designs and compares it; a sweep
selects it with `model.imports` (sweeps/new_factorization.py).
"""

from inception_jax import blocks, layers
from inception_jax.layers import avgpool, conv


@blocks.register('inception_a_asym')
class InceptionAAsymmetric(layers.Parallel):
  """Fig. 5 with each 3×3 as 1×3 → 3×1: 1×1 | 1×1 → 3×3 | 1×1 → 3×3 → 3×3 |
  pool → 1×1, at the released block's widths."""

  def __init__(self, in_features: int, *, b: layers.Builder, pool_features: int):
    def asymmetric_3x3(features):
      return conv(features, (1, 3), factorized=True), conv(features, (3, 1))
    super().__init__(
        branch_1x1=b.tower(in_features, conv(64, 1)),
        branch_3x3=b.tower(in_features, conv(48, 1), *asymmetric_3x3(64)),
        branch_3x3dbl=b.tower(in_features, conv(64, 1), *asymmetric_3x3(96),
                              *asymmetric_3x3(96)),
        branch_pool=b.tower(in_features, avgpool(3), conv(pool_features, 1)))
