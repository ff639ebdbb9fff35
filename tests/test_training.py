"""Train mode: sampled budgets, straight-through Gumbel masks, gradients into the scheduler."""

import torch

from conftest import LATENCY_ID, make_model, make_pixels, make_prompt


def batch(n=2):
    ids = torch.stack([make_prompt(i, latency=True) for i in range(n)])
    labels = ids.clone()
    labels[:, : ids.shape[1] - 1] = -100
    labels[ids == LATENCY_ID] = -100
    # A supervised answer after the latency token, as the training collator places it.
    answer = torch.randint(3, 90, (n, 3), generator=torch.Generator().manual_seed(5))
    return torch.cat([ids, answer], 1), torch.cat([labels, answer], 1), make_pixels(n)


def test_train_mode_samples_budgets_and_trains_the_scheduler():
    for scheduler_type in ("L", "H"):
        model = make_model(scheduler_type).train()
        ids, labels, pixels = batch()
        torch.manual_seed(0)
        out = model(input_ids=ids, pixel_values=pixels, labels=labels)
        plan = out.execution_plan
        assert plan.units.shape == (2,) and plan.heads.requires_grad
        out.loss.backward()
        sched = model.scheduler
        assert sched.mlp_head.weight.grad is not None and sched.mlp_head.weight.grad.abs().sum() > 0
        assert sched.latency_encoder.net[3].weight.grad.abs().sum() > 0
        # The forward values of the straight-through masks are (numerically) 0/1, exactly U_pre + u units.
        heads = plan.heads.detach()
        assert torch.allclose(heads, heads.round(), atol=1e-5)
        if scheduler_type == "L":
            per_row = (heads[:, :, 0] > 0.5).sum(1)
            assert torch.equal(per_row, plan.units + model.config.num_prefix_layers)


def test_train_mode_computes_every_layer_with_masks():
    model = make_model("L").train()
    ids, labels, pixels = batch(1)
    calls = []
    for layer in model.model.language_model.layers:
        layer.input_layernorm.register_forward_hook(lambda *_: calls.append(1))
    model(input_ids=ids, pixel_values=pixels, labels=labels, num_units=0)
    assert len(calls) == 6  # masking saves no compute in training, as the original


def test_train_mask_of_a_hard_plan_matches_eval_skipping():
    # With the noise-free plan forced (num_units = U_max or 0), train-mode masking equals eval-mode skipping.
    model = make_model("L")
    ids, labels, pixels = batch(1)
    for units in (0, 3):
        with torch.no_grad():
            eval_logits = model.eval()(input_ids=ids, pixel_values=pixels, num_units=units).logits
            train_logits = model.train()(input_ids=ids, pixel_values=pixels, num_units=units).logits
        torch.testing.assert_close(train_logits, eval_logits, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads, calls = [], []
    for checkpointing in (False, True):
        model = make_model("H", scheduler_rank=2).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        count = []
        for layer in model.model.language_model.layers:
            layer.mlp.down_proj.register_forward_hook(lambda *_: count.append(1))
        ids, labels, pixels = batch()
        torch.manual_seed(0)
        model(input_ids=ids, pixel_values=pixels, labels=labels, num_units=torch.tensor([2, 5])).loss.backward()
        grads.append(model.scheduler.mlp_head.weight.grad.clone())
        calls.append(len(count))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert calls == [6, 12]  # the backward pass recomputed every layer, planned ones included
    assert grads[0].abs().sum() > 0
