#pragma once
// lightunet: a compile-time-configured U-Net. Include this one header.
#include "backend/cpu/kernels.hpp"
#include "config/unet_config.hpp"
#include "loss/dice.hpp"
#include "model/unet.hpp"
#include "optim/optimizers.hpp"
#include "optim/schedule.hpp"
#include "tensor/tensor.hpp"
