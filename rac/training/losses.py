"""Losses of the method: masked NLL (SFT) and the joint RAC objective.

Eq. (RAC): L_RAC = gamma * L_DPO + (1 - gamma) * L_SFT, where
L_DPO = -log sigmoid(beta * [(log pi(C+) - log pi_ref(C+)) - (log pi(C-) - log pi_ref(C-))])
averaged over pairs, and L_SFT is the token-mean NLL of the chosen question C+. Both terms
use the same forward pass of the policy over chosen and rejected, so the SFT term costs no
extra forward.
"""

from __future__ import annotations

from typing import Any

from rac.training.data import IGNORE_INDEX


def completion_logps(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Sum of log-probabilities of the labelled (answer) tokens per sequence, and their count.

    ``logits[:, t]`` predicts token ``t + 1``; positions labelled ``IGNORE_INDEX`` (the prompt,
    padding) do not count.
    """
    import torch

    logits, labels = logits[:, :-1, :], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def sft_loss(logits: Any, labels: Any) -> Any:
    """Token-mean NLL of the answer tokens of the batch (prompt tokens masked)."""
    logps, counts = completion_logps(logits, labels)
    return -logps.sum() / counts.sum().clamp(min=1)


def rac_loss(
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    ref_chosen_logps: Any,
    ref_rejected_logps: Any,
    chosen_token_counts: Any,
    gamma: float,
    beta: float,
) -> dict[str, Any]:
    """The joint objective and its terms for a batch of preference pairs.

    Parameters
    ----------
    policy_chosen_logps, policy_rejected_logps
        Summed answer log-probs under the model being trained, shape ``(B,)``.
    ref_chosen_logps, ref_rejected_logps
        The same under the reference model (p_theta0, frozen), shape ``(B,)``.
    chosen_token_counts
        Answer tokens of each chosen sequence, shape ``(B,)``.
    gamma, beta
        Weight of the DPO term, and the DPO temperature.

    Returns
    -------
    dict with ``loss`` (to backpropagate), ``dpo_loss``, ``sft_loss``, ``reward_margin``,
    ``reward_accuracy``, ``chosen_reward`` and ``rejected_reward`` (detached, batch means).
    """
    import torch.nn.functional as F

    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    dpo = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    sft = -policy_chosen_logps.sum() / chosen_token_counts.sum().clamp(min=1)
    loss = gamma * dpo + (1 - gamma) * sft
    margin = (chosen_rewards - rejected_rewards).detach()
    return {
        "loss": loss,
        "dpo_loss": dpo.detach(),
        "sft_loss": sft.detach(),
        "reward_margin": margin.mean(),
        "reward_accuracy": (margin > 0).float().mean(),
        "chosen_reward": chosen_rewards.detach().mean(),
        "rejected_reward": rejected_rewards.detach().mean(),
    }
