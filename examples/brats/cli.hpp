#pragma once
// A small declarative command-line parser: options are declared with a default and a help
// line, parsed from `--name value` / `--name=value` / `--flag`, and every mistake (unknown
// option, missing or malformed value, value outside a choice list) is a UsageError whose
// message names the option and the value.
#include <cstdlib>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace brats_cli {

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// "a, b, c"
inline std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

class Options {
public:
    Options(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

    Options& value(const std::string& name, std::string default_value, std::string help,
                   std::vector<std::string> choices = {}) {
        declare(name, {std::move(default_value), std::move(help), std::move(choices), false, false});
        return *this;
    }
    Options& required(const std::string& name, std::string help) {
        declare(name, {"", std::move(help), {}, false, true});
        return *this;
    }
    Options& flag(const std::string& name, std::string help) {
        declare(name, {"0", std::move(help), {}, true, false});
        return *this;
    }

    // Parses argv[first..argc). Returns false when --help was asked for.
    bool parse(int argc, char** argv, int first) {
        for (int i = first; i < argc; ++i) {
            std::string arg = argv[i];
            if (arg == "--help" || arg == "-h") return false;
            if (arg.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + arg + "' (options start with --)");
            std::string name = arg.substr(2), value;
            bool has_value = false;
            if (const auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
                has_value = true;
            }
            auto it = specs_.find(name);
            if (it == specs_.end()) throw UsageError("unknown option --" + name + " for '" + command_ + "'");
            Spec& spec = it->second;
            if (spec.is_flag) {
                if (has_value) throw UsageError("--" + name + " is a flag and takes no value");
                spec.value = "1";
            } else {
                if (!has_value) {
                    if (i + 1 >= argc) throw UsageError("--" + name + " needs a value");
                    value = argv[++i];
                }
                if (!spec.choices.empty()) {
                    bool ok = false;
                    for (const auto& c : spec.choices) ok |= c == value;
                    if (!ok) throw UsageError("--" + name + " must be one of " + join(spec.choices) + ", not '" + value + "'");
                }
                spec.value = value;
            }
            spec.given = true;
        }
        for (const auto& [name, spec] : specs_)
            if (spec.is_required && !spec.given) throw UsageError("missing required option --" + name);
        return true;
    }

    const std::string& str(const std::string& name) const { return spec(name).value; }
    bool given(const std::string& name) const { return spec(name).given; }
    // A value chosen for the user (a plan): used as the default, the option still not given.
    void set_default(const std::string& name, std::string value) {
        if (!specs_.count(name)) throw std::logic_error("option --" + name + " was never declared");
        specs_[name].value = std::move(value);
    }
    bool flag_set(const std::string& name) const { return spec(name).value == "1"; }
    long integer(const std::string& name, long min = 0, long max = 1L << 40) const {
        const std::string& v = str(name);
        char* end = nullptr;
        const long x = std::strtol(v.c_str(), &end, 10);
        if (v.empty() || *end) throw UsageError("--" + name + " expects an integer, not '" + v + "'");
        if (x < min || x > max)
            throw UsageError("--" + name + " must lie in [" + std::to_string(min) + ", " + std::to_string(max) + "], not " + v);
        return x;
    }
    double real(const std::string& name, double min = -1e300, double max = 1e300) const {
        const std::string& v = str(name);
        char* end = nullptr;
        const double x = std::strtod(v.c_str(), &end);
        if (v.empty() || *end) throw UsageError("--" + name + " expects a number, not '" + v + "'");
        if (!(x >= min && x <= max)) throw UsageError("--" + name + " is out of range: " + v);
        return x;
    }
    // "a x b x c" or "a,b,c" -> integers
    std::vector<int> extents(const std::string& name) const {
        std::string v = str(name);
        for (char& c : v)
            if (c == 'x' || c == ',') c = ' ';
        std::istringstream in(v);
        std::vector<int> out;
        int x;
        while (in >> x) {
            if (x <= 0) throw UsageError("--" + name + " needs positive extents, not '" + str(name) + "'");
            out.push_back(x);
        }
        if (!in.eof() || out.empty()) throw UsageError("--" + name + " expects extents like 128x128x128, not '" + str(name) + "'");
        return out;
    }

    std::string help() const {
        std::ostringstream o;
        o << "usage: brats " << command_ << " [options]\n  " << summary_ << "\n\noptions:\n";
        for (const auto& name : order_) {
            const Spec& s = specs_.at(name);
            std::string left = "  --" + name + (s.is_flag ? "" : " <v>");
            o << left << std::string(left.size() < 26 ? 26 - left.size() : 1, ' ') << s.help;
            if (!s.choices.empty()) o << " (" << join(s.choices) << ")";
            if (s.is_required) o << " [required]";
            else if (!s.is_flag && !s.value.empty()) o << " [" << s.value << "]";
            o << "\n";
        }
        return o.str();
    }

private:
    struct Spec {
        std::string value, help;
        std::vector<std::string> choices;
        bool is_flag = false, is_required = false, given = false;
    };
    void declare(const std::string& name, Spec s) {
        if (!specs_.emplace(name, std::move(s)).second) throw std::logic_error("option --" + name + " declared twice");
        order_.push_back(name);
    }
    const Spec& spec(const std::string& name) const {
        auto it = specs_.find(name);
        if (it == specs_.end()) throw std::logic_error("option --" + name + " was never declared");
        return it->second;
    }
    std::string command_, summary_;
    std::map<std::string, Spec> specs_;
    std::vector<std::string> order_;
};

}  // namespace brats_cli
