#pragma once
// Soft Dice loss options (docs/design.md gives the formula). The backend computes the value and
// the gradient with respect to the head's logits in one pass.
namespace lightunet {

struct DiceLoss {
    bool include_background = true;  // softmax head: channel 0 counts
    bool batch_dice = false;         // one Dice per channel over the whole batch instead of per sample
    double smooth = 1e-5;
    double ce_weight = 0.0;  // > 0: Dice + ce_weight * cross-entropy (binary for a sigmoid head)
};

}  // namespace lightunet
