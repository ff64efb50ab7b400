#pragma once
// GPU telemetry through NVML, loaded at run time (dlopen of libnvidia-ml.so.1, which comes with
// the NVIDIA driver): builds need no NVML package and CPU-only machines run unchanged. Only the
// few entry points read here are declared; their C ABI (nvml.h, NVML 11/12) is stable.
#include <dlfcn.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

namespace lightunet::telemetry {

// nvmlClocksThrottleReason* bits (renamed nvmlClocksEventReason* in NVML 12, same values).
inline constexpr unsigned long long throttle_sw_power_cap = 0x4, throttle_hw_slowdown = 0x8, throttle_sw_thermal = 0x20,
                                    throttle_hw_thermal = 0x40, throttle_hw_power_brake = 0x80;
inline constexpr unsigned long long throttle_thermal = throttle_sw_thermal | throttle_hw_thermal;

struct GpuTelemetry {
    static constexpr double unknown = std::numeric_limits<double>::quiet_NaN();
    double temperature = unknown;  // degrees C
    double power_watts = unknown, power_limit_watts = unknown;
    double sm_clock_mhz = unknown;
    double memory_used_mb = unknown;
    unsigned long long throttle_reasons = 0;  // meaningful when throttle_known
    bool throttle_known = false;
};

class Nvml {
public:
    // Loads `library` and initialises NVML for the device with PCI bus id `pci_bus_id` (as
    // cudaDeviceGetPCIBusId gives it: CUDA and NVML number devices differently), or device
    // `index` in NVML's order when that is empty; when that fails, available() is false and why()
    // says what failed (a missing library, NVML's own error text).
    Nvml(const std::string& library, unsigned index, const std::string& pci_bus_id = "") {
        handle_ = ::dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!handle_) {
            const char* e = ::dlerror();
            why_ = "cannot load " + library + (e ? std::string(": ") + e : std::string());
            return;
        }
        const bool found = bind(init_, "nvmlInit_v2") && bind(shutdown_, "nvmlShutdown") && bind(error_string_, "nvmlErrorString") &&
                           bind(count_, "nvmlDeviceGetCount_v2") && bind(handle_by_index_, "nvmlDeviceGetHandleByIndex_v2") &&
                           bind(temperature_, "nvmlDeviceGetTemperature") && bind(power_, "nvmlDeviceGetPowerUsage") &&
                           bind(power_limit_, "nvmlDeviceGetEnforcedPowerLimit") && bind(clock_, "nvmlDeviceGetClockInfo") &&
                           bind(memory_, "nvmlDeviceGetMemoryInfo") && bind(reasons_, "nvmlDeviceGetCurrentClocksThrottleReasons");
        if (!found) return;
        if (const int r = init_(); r != success) {
            why_ = "nvmlInit_v2: " + error(r);
            return;
        }
        initialised_ = true;
        unsigned devices = 0;
        if (const int r = count_(&devices); r != success) {
            why_ = "nvmlDeviceGetCount_v2: " + error(r);
            return;
        }
        if (!pci_bus_id.empty()) {
            int (*handle_by_bus_id)(const char*, Device*) = nullptr;
            if (!bind(handle_by_bus_id, "nvmlDeviceGetHandleByPciBusId_v2")) return;
            if (const int r = handle_by_bus_id(pci_bus_id.c_str(), &device_); r != success) {
                why_ = "nvmlDeviceGetHandleByPciBusId_v2(" + pci_bus_id + "): " + error(r);
                return;
            }
        } else if (index >= devices) {
            why_ = "GPU " + std::to_string(index) + " asked for, NVML sees " + std::to_string(devices);
            return;
        } else if (const int r = handle_by_index_(index, &device_); r != success) {
            why_ = "nvmlDeviceGetHandleByIndex_v2(" + std::to_string(index) + "): " + error(r);
            return;
        }
        available_ = true;
    }
    ~Nvml() {
        if (initialised_) shutdown_();
        if (handle_) ::dlclose(handle_);
    }
    Nvml(const Nvml&) = delete;
    Nvml& operator=(const Nvml&) = delete;

    bool available() const { return available_; }
    const std::string& why() const { return why_; }

    // One reading of every sensor; a sensor whose call fails is left unknown and passed to
    // `failed(call, NVML's error text)`.
    GpuTelemetry read(const std::function<void(const std::string&, const std::string&)>& failed) const {
        GpuTelemetry t;
        if (!available_) return t;
        auto ask = [&](const char* call, int r) {
            if (r != success && failed) failed(call, error(r));
            return r == success;
        };
        unsigned v = 0;
        if (ask("nvmlDeviceGetTemperature", temperature_(device_, temperature_gpu, &v))) t.temperature = v;
        if (ask("nvmlDeviceGetPowerUsage", power_(device_, &v))) t.power_watts = v / 1000.0;
        if (ask("nvmlDeviceGetEnforcedPowerLimit", power_limit_(device_, &v))) t.power_limit_watts = v / 1000.0;
        if (ask("nvmlDeviceGetClockInfo", clock_(device_, clock_sm, &v))) t.sm_clock_mhz = v;
        Memory m{};
        if (ask("nvmlDeviceGetMemoryInfo", memory_(device_, &m))) t.memory_used_mb = double(m.used) / (1024.0 * 1024.0);
        unsigned long long reasons = 0;
        if (ask("nvmlDeviceGetCurrentClocksThrottleReasons", reasons_(device_, &reasons))) t.throttle_reasons = reasons, t.throttle_known = true;
        return t;
    }

private:
    static constexpr int success = 0;          // NVML_SUCCESS
    static constexpr int temperature_gpu = 0;  // NVML_TEMPERATURE_GPU
    static constexpr int clock_sm = 1;         // NVML_CLOCK_SM
    struct Memory {                            // nvmlMemory_t (v1)
        unsigned long long total, free, used;
    };
    using Device = void*;  // nvmlDevice_t: an opaque pointer

    template <class F>
    bool bind(F& f, const char* name) {
        f = reinterpret_cast<F>(::dlsym(handle_, name));
        if (!f && why_.empty()) why_ = std::string("the NVML library has no ") + name;
        return f != nullptr;
    }
    std::string error(int r) const {
        const char* text = error_string_ ? error_string_(r) : nullptr;
        return (text ? std::string(text) : std::string("error")) + " (" + std::to_string(r) + ")";
    }

    void* handle_ = nullptr;
    Device device_ = nullptr;
    bool initialised_ = false, available_ = false;
    std::string why_;
    int (*init_)() = nullptr;
    int (*shutdown_)() = nullptr;
    const char* (*error_string_)(int) = nullptr;
    int (*count_)(unsigned*) = nullptr;
    int (*handle_by_index_)(unsigned, Device*) = nullptr;
    int (*temperature_)(Device, int, unsigned*) = nullptr;
    int (*power_)(Device, unsigned*) = nullptr;
    int (*power_limit_)(Device, unsigned*) = nullptr;
    int (*clock_)(Device, int, unsigned*) = nullptr;
    int (*memory_)(Device, Memory*) = nullptr;
    int (*reasons_)(Device, unsigned long long*) = nullptr;
};

}  // namespace lightunet::telemetry
