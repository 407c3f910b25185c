"""The one table writer: a plain-text (Markdown) summary of `suite.run`'s results, one row per
measurement, printing only the rows whose measurements ran."""


def table(results):
  """A plain-text summary of `run`'s results."""
  lines = ["| what | value |", "|---|---:|"]
  for name, s in results["train_step_s"].items():
    lines.append(f"| train step {name} (s) | {s:.3f} ({results['pairs_per_s'][name]:.0f} "
                 "pairs/s) |")
  peak = results.get("matmul_peak")
  if peak:
    spec = peak.get("spec_flops_per_s")
    lines.append(f"| matmul peak, {peak['size']}^2 {peak['dtype']}, measured (GFLOP/s) | "
                 f"{peak['flops_per_s'] / 1e9:,.0f}" +
                 (f" (datasheet {spec / 1e9:,.0f})" if spec else "") + " |")
  for name, row in results["train_step"].items():
    if "share_of_measured_peak" not in row:
      continue
    what = "matmul GFLOP per step, GFLOP/s per device, share of measured peak"
    value = (f"{row['matmul_flops'] / 1e9:.1f}, "
             f"{row['matmul_flops_per_s'] / row['devices'] / 1e9:,.0f}, "
             f"{100 * row['share_of_measured_peak']:.0f}%")
    if "mfu" in row:
      what, value = what + ", MFU", value + f", {100 * row['mfu']:.1f}%"
    lines.append(f"| {name}: {what} | {value} |")
  packed = results["train_step"].get("reference", {}).get("packing")
  if packed:
    lines.append(f"| reference: packing buffers, share of the tokens / regions (from the "
                 f"data) | {packed['text_token_capacity']:.3f} / {packed['region_capacity']:.3f}"
                 f" ({'the batch fits' if packed['batch_fits'] else 'the batch ran PADDED'}) |")
  profile = results["train_step"].get("reference", {}).get("profile_s", {})
  for piece, s in profile.items():
    lines.append(f"| reference: {piece} (s) | {s:.3f} |")
  torch_ref = results.get("torch_reference")
  if torch_ref:
    ours = results["train_step_s"]["reference"]
    lines.append(f"| reference step, PyTorch {torch_ref['torch']} on this machine (s) | "
                 f"{torch_ref['step_s']:.3f} (this code: {torch_ref['step_s'] / ours:.2f}x) |")
    for piece in ("image_tower_fwd_bwd_s", "text_tower_fwd_bwd_s"):
      lines.append(f"| reference, PyTorch: {piece[:-2].replace('_', ' ')} (s) | "
                   f"{torch_ref[piece]:.3f} |")
  rounds = results.get("torch_interleaved")
  if rounds:
    lines.append(f"| reference step, ours / PyTorch, {rounds['rounds']} interleaved rounds, "
                 f"medians (s) | {rounds['ours_median_s']:.3f} / {rounds['torch_median_s']:.3f} "
                 f"(this code: {rounds['ratio_median']:.2f}x, rounds {min(rounds['ratio']):.2f}"
                 f"-{max(rounds['ratio']):.2f}x) |")
  torch_base = results.get("torch_reference_bert_base")
  if torch_base and "reference:bert-base" in results["train_step_s"]:
    ours = results["train_step_s"]["reference:bert-base"]
    lines.append(f"| reference with BERT-base, PyTorch {torch_base['torch']} on this machine "
                 f"(s) | {torch_base['step_s']:.3f} (this code: "
                 f"{torch_base['step_s'] / ours:.2f}x) |")
  ev = results.get("eval")
  if ev:
    shape = "x".join(map(str, ev["shape"]))
    lines.append(f"| ranking {shape} on device (s) | {ev['median_s']:.3f} |")
    if ev.get("numpy_s") is not None:
      lines.append(f"| ranking, NumPy reference (s) | {ev['numpy_s']:.2f} |")
    lines.append(f"| ranking from 1024-d embeddings (s) | {ev['from_embeddings_s']:.3f} |")
  coco = results.get("text_tower_coco_lengths")
  if coco:
    f, g, t = coco["fractions"], coco["gflop"], coco["median_s"]
    lines.append(f"| reference text tower fwd+bwd, COCO caption lengths, BERT buffer 0.75 / "
                 f"{f['derived']:.3f} (derived) / padded (s; GFLOP) | {t['fixed']:.3f} / "
                 f"{t['derived']:.3f} / {t['padded']:.3f}; {g['fixed']:.1f} / "
                 f"{g['derived']:.1f} / {g['padded']:.1f} |")
  d = results.get("descriptiveness")
  if d:
    lines.append(f"| descriptiveness fit + score, {d['captions']:,} captions (s) | "
                 f"{d['fit_plus_score_s']:.2f} |")
  if "pipeline_rows_per_s" in results:
    lines.append(f"| pipeline rows/s (demo) | {results['pipeline_rows_per_s']:.0f} |")
  for form, v in results.get("sharded_vs_plain_8dev", {}).items():
    if isinstance(v, dict) and "median_s" in v:
      lines.append(f"| 8 devices, demo step, {form} objective (s) | {v['median_s']:.3f} |")
  mem = results.get("loss_memory", {})
  for matching in ("triplet", "infonce"):
    if matching in mem:
      m = mem[matching]
      lines.append(f"| loss temp/device B={mem['batch_size']}, {matching}: plain / sharded / "
                   f"1 device (MiB) | {m['plain_temp_bytes'] / 2**20:.0f} / "
                   f"{m['sharded_temp_bytes'] / 2**20:.0f} / "
                   f"{m['one_device_temp_bytes'] / 2**20:.0f} |")
  lines.append(f"| peak RSS (MiB) | {results['peak_rss_mb']:.0f} |")
  mach = results["machine"]
  lines.append(f"| machine | {mach['cpu']}, {mach['usable_cores']} cores, {mach['backend']}, "
               f"load {mach['load_average_1_5_15']} |")
  return "\n".join(lines)
