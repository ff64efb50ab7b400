#pragma once
// The op graph as a Mermaid flowchart (docs/design.md shows the BraTS 2D network's): one node
// per op, labelled with its module and what it computes, an edge per tensor it reads.
#include <string>

#include "unet_graph.hpp"

namespace lightunet::graph {

inline const char* kind_name(OpKind kind) {
    switch (kind) {
        case OpKind::conv: return "conv";
        case OpKind::norm_act: return "norm+act";
        case OpKind::max_pool: return "max-pool 2";
        case OpKind::strided_down: return "conv 2, stride 2";
        case OpKind::up_transposed: return "transposed conv 2, stride 2";
        case OpKind::up_interpolate: return "conv 1 + nearest x2";
        case OpKind::add_act: return "add + act";
        default: return "output";
    }
}

template <UNetConfig C>
std::string mermaid(bool include_training_only = true) {
    using G = UNetGraph<C>;
    auto node = [](int op) { return "op" + std::to_string(op); };
    auto describe = [](const Op& op) {
        std::string text = op.module.length ? op.module.str() + "<br/>" : std::string();
        text += kind_name(op.kind);
        if (op.kind == OpKind::conv) text.append(" ").append(std::to_string(op.kernel)).append(C.dims == 3 ? "³" : "²");
        if (op.kind == OpKind::norm_act && op.act.act == Act::identity) text += " (no act)";
        if (op.kind == OpKind::output) text += C.head == Head::softmax ? ": softmax" : ": sigmoid";
        text.append(" ").append(std::to_string(op.cin)).append("→").append(std::to_string(op.cout));
        text.append(" @1/").append(std::to_string(1 << op.level));
        if (op.training_only) text += " (training)";
        return text;
    };
    std::string out = "flowchart TD\n    input([\"input " + std::to_string(C.in_channels) + " channels\"])\n";
    for (int i = 0; i < G::op_count; ++i) {
        const Op& op = G::ops[i];
        if (op.training_only && !include_training_only) continue;
        out += "    " + node(i) + "[\"" + describe(op) + "\"]\n";
        for (int slot : op.in) {
            if (slot == no_slot) continue;
            const int from = G::producer[slot];
            out += "    " + (from < 0 ? std::string("input") : node(from)) + " --> " + node(i) + "\n";
        }
    }
    return out;
}

}  // namespace lightunet::graph
