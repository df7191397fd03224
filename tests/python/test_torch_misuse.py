"""autolr.torch used as torch users use torch.optim, including the ways that go wrong: each case
behaves as torch's optimizers do, or is refused with an autolr.Error that changes nothing."""
import copy
import pickle

import numpy as np
import pytest

from conftest import import_torch

torch = import_torch()

import autolr  # noqa: E402
import autolr.torch as alt  # noqa: E402

nn = torch.nn


def two_params():
    torch.manual_seed(0)
    return nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(2, 3))


def step_like_torch(ours, opt_a, theirs, opt_b, steps):
    """`steps` steps of autolr.torch's `opt_a` and torch's `opt_b` on the same gradients of two
    parameters each; they agree after every step."""
    for t in range(steps):
        for (a, b), opt in ((ours, opt_a), (theirs, opt_b)):
            a.grad, b.grad = torch.sin(a.detach() + t), torch.cos(b.detach() - t)
            opt.step()
        for x, y in zip(ours, theirs):
            torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)


# -- the parameters' storage ------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["shrunk", "transposed"])
def test_a_parameter_re_viewed_in_place_is_refused(change):
    """`p.data = p.data[:2]` or `.t()` keeps the storage's address: the library's view of it
    would read past the new size or update the wrong elements."""
    a, b = two_params()
    opt = alt.SGD([a, b], lr=1.0)
    if change == "shrunk":
        a.data = a.data[:2]
    else:
        b.data = b.data.t()
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    before = (a.detach().clone(), b.detach().clone())
    with pytest.raises(autolr.Error, match="re-viewed"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


# -- parameters without a gradient ------------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs,options", [
    (alt.AdamW, torch.optim.AdamW, dict(lr=0.1, weight_decay=0.1)),
    (alt.Adam, torch.optim.Adam, dict(lr=0.1)),
    (alt.Momentum, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
], ids=["adamw-frozen", "adam", "momentum"])
def test_a_parameter_without_a_gradient_is_left_alone_as_torch_leaves_it(ours, theirs, options):
    """A frozen parameter (weight decay would shrink it) and one whose gradient is None for a
    step (momentum would carry it on) stay where they are, in torch and here."""
    def run(make):
        torch.manual_seed(0)
        w, frozen = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3), requires_grad=False)
        opt = make([w, frozen], **options)
        trace = []
        for t in range(6):
            w.grad = None if t in (2, 3) else torch.full((5,), 0.5 + t)
            opt.step()
            trace.append((w.detach().clone(), frozen.detach().clone()))
        return trace
    mine, torchs = run(ours), run(theirs)
    for trace in (mine, torchs):
        assert all(torch.equal(f, trace[0][1]) for _, f in trace), "the frozen parameter moved"
        assert torch.equal(trace[2][0], trace[1][0]) and torch.equal(trace[3][0], trace[1][0]), "moved without a gradient"
    for t in (0, 1):  # before the steps without a gradient, torch's steps
        torch.testing.assert_close(mine[t][0], torchs[t][0], rtol=1e-6, atol=1e-7)
    assert not torch.equal(mine[4][0], mine[3][0]), "a gradient again moves it"


# -- options from param groups ----------------------------------------------------------------------

def test_torch_betas_are_autolr_beta1_and_beta2():
    """`betas=(b1, b2)` as torch's Adam takes it, in the constructor and in a param group, steps
    as torch does; OneCycleLR's momentum cycling writes group["betas"] and the library follows."""
    def make(cls, params):
        a, b = params
        return cls([{"params": [a]}, {"params": [b], "betas": (0.5, 0.9)}], lr=0.05, betas=(0.8, 0.99))
    ours, theirs = two_params(), two_params()
    opt_a, opt_b = make(alt.Adam, ours), make(torch.optim.Adam, theirs)
    step_like_torch(ours, opt_a, theirs, opt_b, 10)
    assert [opt_a._core.get_option("beta1", group=g) for g in (0, 1)] == [0.8, 0.5]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt_a, max_lr=0.1, total_steps=20)
    for _ in range(5):
        opt_a.step()
        sched.step()
    opt_a.step()
    assert opt_a._core.get_option("beta1", group=0) == pytest.approx(opt_a.param_groups[0]["betas"][0])
    assert opt_a._core.get_option("beta1", group=0) != 0.8


def test_a_param_group_option_that_is_not_a_number_is_an_error():
    """A value torch would take (lr as a string, None) is not silently ignored; a key that is no
    autolr option (a group's name) is left alone."""
    a, b = two_params()
    opt = alt.SGD([{"params": [a], "name": "encoder"}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    before = (a.detach().clone(), opt._core.state_dict())
    for bad in ("0.5", None):
        opt.param_groups[0]["lr"] = bad
        with pytest.raises(autolr.Error, match=r"param_groups\[0\]\['lr'\]"):
            opt.step()
        assert torch.equal(a, before[0]) and opt._core.state_dict() == before[1]
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    assert opt.lr == pytest.approx([0.5, 0.1])
    with pytest.raises(autolr.Error, match="lr"):
        alt.SGD([a], lr=None)


def test_sum_sq_and_curvature_must_have_the_parameters_shapes():
    a = nn.Parameter(torch.randn(3, 4))
    a.grad = torch.ones(3, 4)
    opt = alt.AutoSGD([a])
    with pytest.raises(autolr.Error, match=r"sum_sq\[0\] has shape \(4, 3\)"):
        opt.step(sum_sq=[torch.ones(4, 3)], batch_size=16)
    opt = alt.VSGD([a])
    with pytest.raises(autolr.Error, match=r"curvature\[0\] has shape \(12,\)"):
        opt.step(curvature=[torch.ones(12)])


# -- checkpoints and copies -------------------------------------------------------------------------

def train(opt, sched, params, steps, start=0):
    for t in range(start, start + steps):
        for p in params:
            p.grad = torch.sin(p.detach() * (t + 1))
        opt.step()
        sched.step()


def test_resume_sends_what_the_param_groups_say_since_the_last_step():
    """The usual loop saves after `sched.step()`, whose new lr the library gets at the next step:
    the resumed run is the uninterrupted one, bit for bit; an edited state_dict's lr is honoured."""
    def make(params):
        opt = alt.Momentum(params, lr=0.1, momentum=0.9)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    whole = two_params()
    opt, sched = make(whole)
    train(opt, sched, whole, 6)

    part = two_params()
    opt, sched = make(part)
    train(opt, sched, part, 4)  # the 4th sched.step() changes lr: the library has the old one
    saved = (opt.state_dict(), sched.state_dict())
    assert saved[0]["param_groups"][0]["lr"] != opt._core.get_option("lr")
    resumed = [nn.Parameter(p.detach().clone()) for p in part]
    opt, sched = make(resumed)
    opt.load_state_dict(saved[0])
    sched.load_state_dict(saved[1])
    train(opt, sched, resumed, 2, start=4)
    assert all(torch.equal(x, y) for x, y in zip(whole, resumed))

    edited = dict(saved[0], param_groups=[dict(g, lr=0.05) for g in saved[0]["param_groups"]])
    opt, _ = make([nn.Parameter(p.detach().clone()) for p in part])
    opt.load_state_dict(edited)
    for p in opt._tensors:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.lr == pytest.approx([0.05])


def test_a_refused_load_changes_nothing():
    a, b = two_params()
    opt = alt.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    other = alt.Adam([nn.Parameter(a.detach().clone()), nn.Parameter(b.detach().clone())], lr=0.1)
    for p in other._tensors:
        p.grad = -torch.ones_like(p)
    other.step()
    other.step()
    before = opt._core.state_dict()
    wrong_groups = dict(other.state_dict(), param_groups=[dict(other.state_dict()["param_groups"][0], params=[0])])
    with pytest.raises(ValueError):
        opt.load_state_dict(wrong_groups)
    assert opt._core.state_dict() == before
    no_groups = {k: v for k, v in other.state_dict().items() if k != "param_groups"}
    with pytest.raises(autolr.Error, match="param_groups"):
        opt.load_state_dict(no_groups)
    assert opt._core.state_dict() == before


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copying_an_optimizer_is_refused_with_what_to_do(how):
    a, b = two_params()
    opt = alt.Adam([a, b], lr=0.1)
    with pytest.raises(autolr.Error, match="state_dict"):
        copy.deepcopy(opt) if how == "deepcopy" else pickle.dumps(opt)


def test_gi_re_evaluates_where_a_parameter_without_a_gradient_stays():
    """GI's loss after the move is taken at the parameters the step leaves: a frozen one is
    back in place before the closure's second call (weight decay would have moved it)."""
    torch.manual_seed(0)
    w, f = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4), requires_grad=False)
    opt = alt.GI([w, f], base="sgd", lr=0.1, weight_decay=0.5)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append(f.detach().clone())
        loss = ((w * f) ** 2).sum()
        loss.backward()
        return loss
    f0 = f.detach().clone()
    opt.step(closure)
    assert len(seen) == 2 and all(torch.equal(s, f0) for s in seen) and torch.equal(f, f0)


def test_schedule_free_views_keep_a_parameter_that_never_had_a_gradient():
    """schedulefree's eval() and train() leave a parameter no step had a gradient for (it made
    no z for it); under weight decay the library's z for it still decays, and the adapter keeps
    the parameter as it is in both views."""
    schedulefree = pytest.importorskip("schedulefree")

    def run(cls):
        torch.manual_seed(0)
        w, frozen = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3), requires_grad=False)
        opt = cls([w, frozen], lr=0.1, weight_decay=0.1)
        opt.train()
        for t in range(5):
            w.grad = torch.sin(w.detach() + t)
            opt.step()
        opt.eval()
        views = [(w.detach().clone(), frozen.detach().clone())]
        opt.train()
        views.append((w.detach().clone(), frozen.detach().clone()))
        return views
    ours, theirs = run(alt.AdamWScheduleFree), run(schedulefree.AdamWScheduleFree)
    for (w_a, f_a), (w_b, f_b) in zip(ours, theirs):
        assert torch.equal(f_a, f_b)
        torch.testing.assert_close(w_a, w_b, rtol=1e-5, atol=1e-6)


def test_tensor_options_and_betas_as_torch_takes_them():
    """A 0-d tensor lr (torch.optim takes one) and betas as a 2-element tensor step as torch's
    Adam; betas of another length is an error, as in torch."""
    ours, theirs = two_params(), two_params()
    opt_a = alt.Adam(ours, lr=torch.tensor(0.05), betas=torch.tensor([0.7, 0.95]))
    opt_b = torch.optim.Adam(theirs, lr=0.05, betas=(0.7, 0.95))
    step_like_torch(ours, opt_a, theirs, opt_b, 5)
    for bad in ((0.5,), (0.5, 0.6, 0.7), "0.5"):
        with pytest.raises(autolr.Error, match="betas"):
            alt.Adam(two_params(), betas=bad)


def test_a_step_refused_for_its_arguments_changes_no_option():
    """Options are sent before the library checks the step's inputs; a refused step (a Σg² of
    the wrong shape, a batch size that is no count) puts them back."""
    a = nn.Parameter(torch.randn(3, 4))
    opt = alt.AutoSGD([a])
    a.grad = torch.ones(3, 4)
    opt.step(sum_sq=[torch.ones(3, 4)], batch_size=16)
    before = opt._core.state_dict()
    opt.param_groups[0]["nu"] = 0.5
    for kwargs in (dict(sum_sq=[torch.ones(4, 3)], batch_size=16), dict(sum_sq=[torch.ones(3, 4)], batch_size="four")):
        with pytest.raises(autolr.Error):
            opt.step(**kwargs)
        assert opt._core.state_dict() == before
    opt.step(sum_sq=[torch.ones(3, 4)], batch_size=16)
    assert opt._core.get_option("nu") == 0.5


def test_gi_loads_a_state_dict_while_a_step_waits_for_its_loss():
    a, b = two_params()
    opt = alt.GI([a, b], base="sgd", lr=0.1)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step(loss=1.0)
    opt.report_loss(0.5)
    saved = opt.state_dict()
    opt.step(loss=1.0)  # waits for report_loss: nothing can be saved now
    opt.load_state_dict(saved)
    assert opt._core.state_dict() == bytes(saved["autolr"].numpy())


@pytest.mark.parametrize("saved_in", ["train", "eval"])
def test_schedule_free_resumed_swaps_views_as_the_uninterrupted_run(saved_in):
    """The state dict says which parameters never had a gradient; a resumed optimizer's eval()
    and train() then move exactly those the uninterrupted one moves."""
    def make():
        torch.manual_seed(0)
        return nn.Linear(4, 3)
    x = torch.randn(8, 4)
    m = make()
    opt = alt.AdamWScheduleFree(m.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    if saved_in == "eval":
        opt.eval()
    saved = opt.state_dict()
    m2 = make()
    m2.load_state_dict(m.state_dict())
    opt2 = alt.AdamWScheduleFree(m2.parameters(), lr=0.05)
    opt2.load_state_dict(saved)
    for swap in (["eval", "train"] if saved_in == "train" else ["train"]):
        getattr(opt, swap)()
        getattr(opt2, swap)()
        assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters())), swap


def test_a_step_taken_in_part_keeps_its_options_and_says_why():
    """GI's move happens before its loss at the new parameters is taken; when that fails the
    library reports the move (ALR_CALLBACK_FAILED) and the options it used stay sent."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5))
    opt = alt.GI([w], base="adam", lr=1e-3)
    opt.param_groups[0]["lr"] = 2e-3  # GI's initial η: may change until the first step
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the re-evaluation failed")
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(autolr.Error, match="were moved") as info:
        opt.step(closure)
    assert info.value.status == "ALR_CALLBACK_FAILED"
    assert opt._core.get_option("lr") == opt.param_groups[0]["lr"] == 2e-3


@pytest.mark.parametrize("cls", [alt.Adam, alt.Momentum, alt.Prodigy, alt.AdamWScheduleFree, alt.SGDScheduleFree])
def test_one_cycle_lr_takes_the_classes_as_they_come(cls):
    """OneCycleLR (cycle_momentum) needs betas or momentum in the defaults, as torch's Adam and
    SGD and the reference packages have them; each group shows the library's values."""
    a, b = two_params()
    opt = cls([a, b], lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    key = "betas" if "betas" in opt.param_groups[0] else "momentum"
    name = "beta1" if key == "betas" else "momentum"
    for t in range(4):
        a.grad, b.grad = torch.sin(a.detach() + t), torch.cos(b.detach() + t)
        opt.step()
        sched.step()
    opt.step()
    shown = opt.param_groups[0][key]
    assert opt._core.get_option(name) == pytest.approx(shown[0] if key == "betas" else shown)


def test_a_scheduler_s_own_keys_are_not_sent_as_options():
    """OneCycleLR keeps its momentum range in `base_momentum` and `max_momentum`; schedule-free
    over momentum has an option `base_momentum`, which the scheduler must not overwrite."""
    a, b = two_params()
    opt = alt.ScheduleFree([a, b], base="momentum", base_momentum=0.5, lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    sched.step()
    opt.step()
    assert opt.param_groups[0]["base_momentum"] != 0.5 and opt._core.get_option("base_momentum") == 0.5


def test_a_new_base_sends_the_param_groups_again():
    """Setting `base` resets the library's options to their defaults; the param groups still
    hold the user's values, which the next step sends."""
    w = nn.Parameter(torch.randn(4))
    opt = alt.GI([w], base="sgd", lr=0.01, weight_decay=0.1)
    opt.set_option("base", "momentum")
    w.grad = torch.ones(4)
    opt.step(loss=1.0)
    assert opt._core.get_option("lr") == 0.01 and opt._core.get_option("weight_decay") == 0.1


@pytest.mark.parametrize("bad", [10 ** 400, "nan-string"], ids=["huge-int", "string"])
def test_a_value_no_c_double_holds_is_an_autolr_error_that_changes_nothing(bad):
    a, b = two_params()
    opt = alt.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    before = opt._core.state_dict()
    opt.param_groups[0]["lr"] = 0.2
    opt.param_groups[1]["weight_decay"] = bad
    with pytest.raises(autolr.Error, match="weight_decay"):
        opt.step()
    assert opt._core.state_dict() == before


def test_unset_global_options_in_every_group():
    """NaN is an unset option (Prodigy's beta3: √β2); the same NaN in every group is one value."""
    a, b = two_params()
    opt = alt.Prodigy([{"params": [a], "beta3": float("nan")}, {"params": [b], "beta3": float("nan")}])
    for _ in range(3):
        a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
        opt.step()
    assert opt._core.get_option("beta3") != opt._core.get_option("beta3")


def test_schedule_free_views_use_the_groups_current_beta():
    """schedulefree's eval() reads betas[0] from the param group (OneCycleLR changes it after
    each step); so does autolr.torch's, sending the groups' values first."""
    schedulefree = pytest.importorskip("schedulefree")

    def run(cls):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(6))
        opt = cls([p], lr=0.01)
        opt.train()
        for _ in range(5):
            opt.zero_grad()
            p.pow(2).sum().backward()
            opt.step()
        opt.param_groups[0]["betas"] = (0.5, 0.999)
        opt.eval()
        return p.detach().clone()
    torch.testing.assert_close(run(alt.AdamWScheduleFree), run(schedulefree.AdamWScheduleFree), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("entry,bad", [("betas", (0.9,)), ("betas", "ab"), ("never_stepped", [True]), ("never_stepped", [5]),
                                       ("never_stepped", "1")])
def test_a_state_dict_with_a_bad_entry_is_refused_before_anything_changes(entry, bad):
    a, b = two_params()
    opt = alt.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    saved = opt.state_dict()
    opt.step()
    before, groups = opt._core.state_dict(), [dict(g) for g in opt.param_groups]
    if entry == "betas":
        saved["param_groups"][0]["betas"] = bad
    else:
        saved["autolr_never_stepped"] = bad
    with pytest.raises(autolr.Error, match="betas" if entry == "betas" else "never_stepped"):
        opt.load_state_dict(saved)
    assert opt._core.state_dict() == before and [dict(g) for g in opt.param_groups] == groups


def test_a_new_base_learns_its_options_again():
    """sgd has no beta1: while it is GI's base (before the first step) the groups' betas are no
    options; back over adam they are sent again."""
    a = nn.Parameter(torch.ones(2))
    opt = alt.GI([a], base="adam")
    opt.set_option("base", "sgd")
    a.grad = torch.ones(2)
    with pytest.raises(autolr.Error, match="loss"):
        opt.step()  # refused (GI needs the loss): betas were found to be no option of GI over sgd
    opt.set_option("base", "adam")
    opt.param_groups[0]["betas"] = (0.3, 0.999)
    opt.step(loss=1.0)
    assert opt._core.get_option("beta1") == 0.3


def test_every_group_without_its_own_betas_shows_the_library_s():
    """torch's Adam takes groups of which only some give betas, and OneCycleLR then cycles every
    group's; betas and beta1 in one group are refused."""
    a, b = two_params()
    opt = alt.Adam([{"params": [a], "betas": (0.8, 0.99)}, {"params": [b]}])
    assert opt.param_groups[1]["betas"] == (opt._core.get_option("beta1", group=1), opt._core.get_option("beta2", group=1))
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    with pytest.raises(autolr.Error, match="not both"):
        alt.Adam([{"params": [a], "betas": (0.8, 0.99), "beta1": 0.7}])


def test_set_option_takes_a_group_given_as_a_whole_float():
    a, b = two_params()
    opt = alt.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
    opt.set_option("lr", 0.5, group=torch.tensor(1.0))
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    assert opt.param_groups[1]["lr"] == 0.5 and opt.lr == pytest.approx([0.1, 0.5])


def test_a_loss_that_is_no_number_is_an_autolr_error_and_an_interrupt_stays_one():
    w = nn.Parameter(torch.randn(4))
    opt = alt.GI([w], base="sgd", lr=0.1)
    w.grad = torch.ones(4)
    for bad in ("abc", torch.tensor([1.0, 2.0]), torch.tensor(1 + 0j)):
        with pytest.raises(autolr.Error, match="loss"):
            opt.step(loss=bad)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)


def test_eval_and_train_do_nothing_for_an_algorithm_with_one_view():
    """Not even send the groups' options (a value the library would refuse stays the step's to
    report)."""
    a, b = two_params()
    opt = alt.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    opt.param_groups[0]["lr"] = -1.0
    opt.eval()
    opt.train()
    assert opt._core.get_option("lr") == 0.1


def test_a_new_base_shows_its_own_momentum():
    """schedule-free over adamw shows betas; over sgd its interpolation is `momentum`."""
    a, b = two_params()
    opt = alt.ScheduleFree([a, b], base="adamw")
    assert "betas" in opt.param_groups[0]
    opt.set_option("base", "sgd")
    assert "betas" not in opt.param_groups[0] and opt.param_groups[0]["momentum"] == opt._core.get_option("momentum")
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)


def test_numbers_as_torch_takes_them_and_bools_as_no_index():
    a = nn.Parameter(torch.randn(3))
    opt = alt.Adam([a], lr=torch.tensor([0.01]))  # torch.optim takes a one-element tensor lr
    assert opt._core.get_option("lr") == pytest.approx(0.01)
    for bad in (np.array(True), torch.tensor(True)):
        with pytest.raises(autolr.Error, match="group"):
            opt.set_option("lr", 0.1, group=bad)
    with pytest.raises(autolr.Error, match="lr"):
        alt.Adam([a], lr=np.timedelta64(1))
