"""The cost counter against the published figures and XLA's own count."""

import json
import os

import jax
import pytest
from helpers import ROOT, run_cli

from inception_jax import cost, models
from inception_jax.cost import jaxpr_macs

# Published figures: Keras InceptionV3 count_params() and torchvision's 5.713 G
# multiply-adds, both at 299×299, 1000 classes, no aux
# (docs/paper_notes.md#parameter-and-multiply-add-counts).
KERAS_PARAMS = 23_851_784
KERAS_TRAINABLE = 23_817_352
V3_MACS = 5_713_216_096


def test_inception_v3_matches_published_counts():
  c = cost.count(models.preset('inception_v3'), 299)
  assert c.params == KERAS_PARAMS
  assert c.trainable_params == KERAS_TRAINABLE
  assert abs(c.macs - V3_MACS) <= 1e-3 * V3_MACS


def test_aux_head_counts_follow_its_layer_list():
  c = cost.count(models.preset('inception_v3', num_classes=1000), 299)
  # Fig. 8 as released: avg-pool 5×5/3 (17 → 5), 1×1 conv 768→128 + BN,
  # 5×5 conv 128→768 + BN (5 → 1), linear 768→1000 with bias. A BN layer
  # without scale holds 3 values per channel (offset, moving mean, variance).
  layers = [
      # (weights, bn channels, output positions)
      (1 * 1 * 768 * 128, 128, 5 * 5),
      (5 * 5 * 128 * 768, 768, 1 * 1),
  ]
  params = sum(w + 3 * c for w, c, _ in layers) + 768 * 1000 + 1000
  macs = sum(w * pos for w, _, pos in layers) + 768 * 1000
  assert c.aux_params == params == 3_327_592
  assert c.aux_macs == macs
  # Inception-v2's aux FC has no BN but a bias: 768 values fewer × 2.
  v2 = cost.count(models.preset('inception_v2'), 299)
  assert v2.aux_params == params - 3 * 768 + 768


def test_cost_agrees_with_xla_cost_analysis():
  """XLA counts 2 flops per multiply-add and leaves out kernel taps on SAME
  padding; the rest of its count is element-wise work (BN, ReLU, pooling),
  about half a percent of the total at full size."""
  spec = models.preset('inception_v3', aux_head=False, conv_impl='xla')   # as written
  model = models.create(spec, image_size=299)
  flops = cost.xla_flops(model, 299)
  forward, state, x = cost._forward(model, 299, return_aux=False)
  jaxpr = jax.make_jaxpr(forward)(state, x)
  assert jaxpr_macs(jaxpr) == cost.count(spec, 299).macs
  valid = jaxpr_macs(jaxpr, include_padding=False)
  assert 2 * valid <= flops <= 2 * valid * 1.01


def test_valid_taps_of_one_convolution_match_xla():
  f = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (2, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  x = jax.ShapeDtypeStruct((2, 17, 13, 8), 'float32')
  w = jax.ShapeDtypeStruct((7, 3, 8, 16), 'float32')
  analysis = jax.jit(f).lower(x, w).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  jaxpr = jax.make_jaxpr(f)(x, w)
  assert 2 * jaxpr_macs(jaxpr, include_padding=False) == analysis['flops']
  assert jaxpr_macs(jaxpr) == 2 * 9 * 13 * 16 * (7 * 3 * 8)


def test_cost_follows_width_and_resolution():
  base = cost.count(models.preset('inception_v3', aux_head=False), 299)
  half = cost.count(models.preset('inception_v3', aux_head=False, width_multiplier=0.5), 299)
  assert 0.2 < half.macs / base.macs < 0.3           # ≈ quadratic in width
  big = cost.count(models.preset('inception_v3', aux_head=False), 399)
  assert big.params == base.params and big.macs > 1.5 * base.macs
  # Section 5: conv-then-pool costs several times pool-then-conv's reduction.
  pc = cost.count(models.preset('inception_v3', aux_head=False, grid_reduction='pool_conv'))
  cp = cost.count(models.preset('inception_v3', aux_head=False, grid_reduction='conv_pool'))
  assert cp.macs - base.macs > 3 * (pc.macs - base.macs) > 0
  # Table 2: the low-resolution stems keep the compute of 299×299 (±10%).
  for preset in ('inception_v3_rf151', 'inception_v3_rf79'):
    c = cost.count(models.preset(preset, aux_head=False))
    assert abs(c.macs / base.macs - 1) < 0.1, preset


def test_a_folder_datasets_classes_are_counted_without_its_images(tmp_path):
  """`num_classes=None` follows the dataset: `cost` counts the class folders
  of ROOT/train/ (hidden ones are not classes) without opening the data —
  there is no image here, which the input pipeline would refuse."""
  from inception_jax import config_lib
  for name in ('cat', 'dog', 'emu', '.ipynb_checkpoints'):
    (tmp_path / 'train' / name).mkdir(parents=True)
  config = config_lib.load('configs/inception_v3.py:scale=tiny',
                           {'data.name': 'folder', 'data.path': str(tmp_path)})
  assert config.model.num_classes is None
  assert cost.of_config(config).num_classes == 3


def test_cli_cost_json_from_another_directory(tmp_path):
  """`python -m inception_jax` from anywhere, the config given by absolute path."""
  config = os.path.join(ROOT, 'configs', 'inception_v3.py')
  result = run_cli('cost', '--config', config, '--json', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout)
  assert out['params'] == KERAS_PARAMS and out['image_size'] == 299
  assert abs(out['macs'] - V3_MACS) <= 1e-3 * V3_MACS
  assert out['aux_params'] == 3_327_592


def test_cli_cost_sweep_prints_one_row_per_run(cli_main):
  code, out, err = cli_main('cost', '--sweep', 'sweeps/table3_ablation.py:scale=paper',
                            '--json')
  assert code == 0, err
  rows = {r['name']: r for r in json.loads(out)}
  assert list(rows) == ['inception_v2', 'v2_rmsprop', 'v2_label_smoothing',
                        'v2_factorized_7x7', 'inception_v3']
  # The recipe rows share the v2 architecture; factorizing the 7×7 adds compute.
  assert rows['inception_v2']['macs'] == rows['v2_label_smoothing']['macs']
  assert rows['v2_factorized_7x7']['macs'] == rows['inception_v3']['macs'] == V3_MACS
  assert rows['inception_v2']['macs'] < V3_MACS
  code, out, _ = cli_main('cost', '--sweep', 'sweeps/table3_ablation.py:scale=paper')
  assert code == 0
  lines = out.strip().splitlines()
  assert len(lines) == 2 + 5 and '5.713' in lines[-1] and '4.8' in lines[-1]
  assert lines[0].split() == ['run', 'image', 'params', 'G', 'mult-adds', 'paper', 'Bn', 'ops']


@pytest.mark.parametrize('args,message', [
    (['--config.model.colour=red'], "unknown config key 'model.colour'"),
    (['--config.data.image_size=50'], 'minimum is 75×75'),
    (['--config.data.image_size=big'], "expected int"),
    (['--config.model.stem=5x5'], 'model.stem must be one of'),
])
def test_cli_bad_input_is_one_clear_line(cli_main, args, message):
  code, _, err = cli_main('cost', '--config', 'configs/inception_v3.py', *args)
  assert code == 2
  assert message in err
  assert err.count('\n') == 1 and err.startswith('error:')
