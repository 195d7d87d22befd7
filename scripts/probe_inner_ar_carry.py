"""Probe, not a feature: inner_ar's AR(1) carried across patch boundaries, at inference only.

    python scripts/probe_inner_ar_carry.py scripts/demo_jumps.py streamflame/checkpoints/default CAND
    python scripts/probe_inner_ar_carry.py streamflame eval runs/calib_train.csv --model CAND ...

runs the script or module with FlowHead.sample replaced: for a model with ar_patches and inner_ar,
patch j+1's first base value continues the AR from where the same path's patch j ended,
eps_0 = a eps_47(prev) + sqrt(1 - a^2) z_0, instead of starting fresh. Training never saw it (its
likelihood starts each patch fresh), so this measures what a trained version could buy
(docs/model.md rows 23-24); the service never runs it."""
import runpy, sys, torch
from streamflame.model import flow as F_

orig_patch = F_.FlowHead._patch

def sample(self, c, hint, z, bounds=None, known=None):
    if not (self.ar and self.inner_ar):
        return orig_sample(self, c, hint, z, bounds, known)
    n = z.shape[0]
    start = None
    if known is not None and known.shape[-1]:
        y0 = torch.cat([known.to(hint.dtype), hint[:, 0, known.shape[-1]:self.p]], -1)
        start = self._unflow(y0, c[:, 0])[0][:n, None, :known.shape[-1]]
    loc, sig = self._loc(c, hint)
    loc, scale = loc[:n].unsqueeze(-2), torch.exp(sig[:n]).unsqueeze(-2)
    cond = [(hc[:n].unsqueeze(-2), ec[:n].unsqueeze(-2)) for hc, ec in self._cond(c)]
    a = self._ar_coef(c[:n])
    gamma = self.prev(c)[:n].unsqueeze(-2)
    last = hint[:n, 0, self.p:self.p + 1].unsqueeze(-2)
    prev, out, e_prev = last, [], None
    for j in range(z.shape[1]):
        aj = a[:, j]                                   # (n, 1)
        lj = loc[:, j] + gamma[:, j] * (prev - last)
        eps = self._correlate(z[:, j], aj, loc=lj, scale=scale[:, j], start=start if j == 0 else None)
        if e_prev is not None:
            z0 = z[:, j][..., :1]
            delta = aj[:, None] * e_prev + torch.sqrt(1 - aj * aj)[:, None] * z0 - z0
            eps = eps + delta * self._powers(aj)[:, None, :]
        x = lj + scale[:, j] * eps
        if j == 0 and start is not None:
            F_._put_start(x, start)
        e_prev = ((x - lj) / scale[:, j])[..., -1:]
        y = self._couple(x, [(hc[:, j], ec[:, j]) for hc, ec in cond])
        out.append(y)
        prev = self.bound(y[..., -1:], None if bounds is None else bounds[:n, None])
    return torch.stack(out, 1)

orig_sample = F_.FlowHead.sample
F_.FlowHead.sample = sample
target = sys.argv[1]; sys.argv = sys.argv[1:]
if target.endswith('.py'):
    runpy.run_path(target, run_name='__main__')
else:
    runpy.run_module(target, run_name='__main__')
