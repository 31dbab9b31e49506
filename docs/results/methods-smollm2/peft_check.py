"""Export each run of this folder to PEFT, load it with PeftModel on SmolLM2, import it back with
`eptk import-peft`, and print the largest relative logit error of each against eptk's own logits
(run from the repository root: python docs/results/methods-smollm2/peft_check.py RUN...)."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from eptk.loading import run_logits
from eptk.models import load_model

PROMPTS = ["12+34=", "7+58=", "91+9="]


def rel_err(a, b, mask):
    real = mask.bool()
    return float((a[real] - b[real]).abs().max() / b[real].abs().max())


def main(runs):
    from peft import PeftModel
    loaded = load_model("smollm2")
    loaded.tokenizer.padding_side = "right"  # PEFT puts real tokens at P + index: exact for right padding
    enc = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    for run in map(Path, runs):
        ours = run_logits(run, ids, mask, backend="torch")
        with tempfile.TemporaryDirectory() as tmp:
            adapter, imported = Path(tmp) / "adapter", Path(tmp) / "imported"
            cli = [sys.executable, "-m", "eptk.cli"]
            subprocess.run([*cli, "export", str(run), "--format", "peft", "--out", str(adapter)], check=True)
            peft_type = json.loads((adapter / "adapter_config.json").read_text())["peft_type"]
            base = load_model("smollm2").model.eval()
            with torch.no_grad():  # the model without the adapter: the check must tell the two apart
                plain = base(input_ids=ids, attention_mask=mask).logits
            wrapped = PeftModel.from_pretrained(base, str(adapter)).eval()
            with torch.no_grad():
                theirs = wrapped(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:]
            subprocess.run([*cli, "import-peft", str(adapter), "--task", "arith", "--out", str(imported)],
                           check=True, capture_output=True)
            back = run_logits(imported, ids, mask, backend="torch")
        print(f"{run.name}: {peft_type}, PEFT vs eptk {rel_err(theirs, ours, mask):.1e}, "
              f"imported back vs eptk {rel_err(back, ours, mask):.1e} (no prompt vs eptk "
              f"{rel_err(plain, ours, mask):.1e}; attention: {base.config._attn_implementation})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
