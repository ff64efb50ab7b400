// A stand-in for libnvidia-ml.so.1 in the watchdog's tests, loaded through the same dlopen path:
// the entry points telemetry/nvml.hpp binds, with values scripted in the file that
// LIGHTUNET_FAKE_NVML_SCRIPT names (read at nvmlInit_v2). Each line is one poll:
//   temperature_C power_mW power_limit_mW sm_clock_MHz memory_used_MiB throttle_reasons_hex
// A field "-" makes that call fail with NVML_ERROR_NOT_SUPPORTED (3); a first line "init_fails"
// makes nvmlInit_v2 fail with NVML_ERROR_DRIVER_NOT_LOADED (9). Every nvmlDeviceGetTemperature
// call (the first read of a poll) moves to the next line; the last line repeats.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr int success = 0, not_supported = 3, not_found = 6, driver_not_loaded = 9;
// The one device's PCI bus id (nvmlDeviceGetHandleByPciBusId_v2 finds no other).
constexpr const char* bus_id = "00000000:3B:00.0";
std::vector<std::vector<std::string>> lines;
long line = -1;
int handle_storage = 0;

const std::string* field(std::size_t i) {
    if (lines.empty()) return nullptr;
    const auto& l = lines[std::size_t(std::max(0L, std::min(line, long(lines.size()) - 1)))];
    return i < l.size() && l[i] != "-" ? &l[i] : nullptr;
}
int read_field(std::size_t i, unsigned* out) {
    const std::string* f = field(i);
    if (!f) return not_supported;
    *out = unsigned(std::stoul(*f));
    return success;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int nvmlInit_v2() {
    lines.clear();
    line = -1;
    const char* path = std::getenv("LIGHTUNET_FAKE_NVML_SCRIPT");
    std::ifstream in(path ? path : "");
    for (std::string text; std::getline(in, text);) {
        std::istringstream words(text);
        std::vector<std::string> l;
        for (std::string w; words >> w;) l.push_back(w);
        if (!l.empty()) lines.push_back(l);
    }
    return !lines.empty() && lines[0][0] == "init_fails" ? driver_not_loaded : success;
}
__attribute__((visibility("default"))) int nvmlShutdown() { return success; }
__attribute__((visibility("default"))) const char* nvmlErrorString(int r) {
    return r == not_supported ? "Not Supported" : r == not_found ? "Not Found" : r == driver_not_loaded ? "Driver Not Loaded" : "Unknown Error";
}
__attribute__((visibility("default"))) int nvmlDeviceGetCount_v2(unsigned* count) {
    *count = 1;
    return success;
}
__attribute__((visibility("default"))) int nvmlDeviceGetHandleByIndex_v2(unsigned, void** device) {
    *device = &handle_storage;
    return success;
}
__attribute__((visibility("default"))) int nvmlDeviceGetHandleByPciBusId_v2(const char* id, void** device) {
    if (std::string(id) != bus_id) return not_found;
    *device = &handle_storage;
    return success;
}
__attribute__((visibility("default"))) int nvmlDeviceGetTemperature(void*, int, unsigned* t) {
    ++line;
    return read_field(0, t);
}
__attribute__((visibility("default"))) int nvmlDeviceGetPowerUsage(void*, unsigned* mw) { return read_field(1, mw); }
__attribute__((visibility("default"))) int nvmlDeviceGetEnforcedPowerLimit(void*, unsigned* mw) { return read_field(2, mw); }
__attribute__((visibility("default"))) int nvmlDeviceGetClockInfo(void*, int, unsigned* mhz) { return read_field(3, mhz); }
__attribute__((visibility("default"))) int nvmlDeviceGetMemoryInfo(void*, unsigned long long* memory) {  // total, free, used
    unsigned mib = 0;
    if (const int r = read_field(4, &mib); r != success) return r;
    memory[0] = 8ull << 30, memory[2] = (unsigned long long)mib << 20, memory[1] = memory[0] - memory[2];
    return success;
}
__attribute__((visibility("default"))) int nvmlDeviceGetCurrentClocksThrottleReasons(void*, unsigned long long* reasons) {
    const std::string* f = field(5);
    if (!f) return not_supported;
    *reasons = std::stoull(*f, nullptr, 16);
    return success;
}

}  // extern "C"
