"""Probe, not a feature: every future patch j >= 1 shifted so that the zero-noise chain is continuous.

    python scripts/probe_seam_shift.py scripts/demo_jumps.py streamflame/checkpoints/default CAND
    RAMP=1 python scripts/probe_seam_shift.py streamflame eval runs/calib_train.csv --model CAND ...

runs the script or module with FlowHead.sample replaced (models with ar_patches): alongside the paths it
draws the zero-noise chain (every patch at its base location, chained through its predecessor's end)
and shifts patch j, every path alike, by W (env, default 1) x (the chain's end of patch j-1 - the
chain's step 0 of patch j); RAMP=1 scales that shift from 1 at step 0 down to 0 at the patch's last
step, so the chain keeps each patch's own end. The shift depends on the conditions only (a trained
version would keep an exact density). Untrained weights; docs/model.md row 25 gives what it buys and
costs. The service never runs it."""
import os, runpy, sys, torch
from streamflame.model import flow as F_
W = float(os.environ.get("W", "1.0")); RAMP = os.environ.get("RAMP", "0") == "1"
orig_sample = F_.FlowHead.sample

def sample(self, c, hint, z, bounds=None, known=None):
    if not self.ar:
        return orig_sample(self, c, hint, z, bounds, known)
    n = z.shape[0]
    start = None
    if known is not None and known.shape[-1]:
        y0 = torch.cat([known.to(hint.dtype), hint[:, 0, known.shape[-1]:self.p]], -1)
        start = self._unflow(y0, c[:, 0])[0][:n, None, :known.shape[-1]]
    loc, sig = self._loc(c, hint)
    loc, scale = loc[:n].unsqueeze(-2), torch.exp(sig[:n]).unsqueeze(-2)
    cond = [(hc[:n].unsqueeze(-2), ec[:n].unsqueeze(-2)) for hc, ec in self._cond(c)]
    a = self._ar_coef(c[:n]) if self.inner_ar else None
    gamma = self.prev(c)[:n].unsqueeze(-2)
    last = hint[:n, 0, self.p:self.p + 1].unsqueeze(-2)
    b = None if bounds is None else bounds[:n, None]
    prev, carry, out = last, None, []
    zprev, zcarry, zend = last, None, None
    for j in range(z.shape[1]):
        cj = [(hc[:, j], ec[:, j]) for hc, ec in cond]
        aj = None if a is None else a[:, j]
        st = start if j == 0 else None
        zy, ze = self._patch(loc[:, j], scale[:, j], gamma[:, j], zprev, last, torch.zeros_like(z[:, j, :1]), cj, st, aj, zcarry)
        y, e = self._patch(loc[:, j], scale[:, j], gamma[:, j], prev, last, z[:, j], cj, st, aj, carry)
        if j > 0:
            shift = W * (zend - zy[..., :1])
            if RAMP:                                   # 1 at step 0 down to 0 at step p-1: no drift
                shift = shift * torch.linspace(1, 0, self.p, dtype=shift.dtype)
            y, zy = y + shift, zy + shift
        zend = zy[..., -1:]
        zprev, zcarry = self.bound(zend, b), (ze if self.carry else None)
        carry = e if self.carry else None
        out.append(y)
        prev = self.bound(y[..., -1:], b)
    return torch.stack(out, 1)

F_.FlowHead.sample = sample
target = sys.argv[1]; sys.argv = sys.argv[1:]
if target.endswith('.py'):
    runpy.run_path(target, run_name='__main__')
else:
    runpy.run_module(target, run_name='__main__')
