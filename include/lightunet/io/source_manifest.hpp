#pragma once
// What a conversion reads from a folder, and a manifest of it that a store keeps: one line per
// input file (path relative to the folder, size in bytes, modification time in nanoseconds),
// after a first line with the conversion's settings. A later run compares the folder's manifest
// with the store's and converts again only when they differ (a file added, removed, rewritten,
// or other settings), so resuming a run does not repeat a conversion of hours.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "kaggle_h5.hpp"
#include "nifti.hpp"

namespace lightunet::io {

namespace fs = std::filesystem;

// NIfTI cases (found recursively, either naming) or Kaggle slices by volume; never both.
struct ConvertInputs {
    std::vector<CaseFiles> nifti;
    std::map<int, std::map<int, fs::path>> kaggle;  // volume -> slice -> file
};

inline ConvertInputs find_convert_inputs(const fs::path& input) {
    std::error_code error;
    if (!fs::is_directory(input, error)) throw data::DataError(input.string() + ": not a folder");
    ConvertInputs inputs;
    try {
        inputs.nifti = find_cases(input);
    } catch (const data::DataError& problem) {
        if (std::string(problem.what()).find("no BraTS case files") == std::string::npos) throw;
    }
    bool has_kaggle = false;
    for (const fs::directory_entry& entry : fs::directory_iterator(input, error))
        if (entry.path().extension() == ".h5" && entry.path().filename().string().rfind("volume_", 0) == 0) has_kaggle = true;
    if (has_kaggle) inputs.kaggle = group_kaggle_slices(input);
    if (inputs.nifti.empty() && inputs.kaggle.empty())
        throw data::DataError(input.string() + ": no BraTS NIfTI cases and no Kaggle volume_<v>_slice_<s>.h5 files");
    if (!inputs.nifti.empty() && !inputs.kaggle.empty())
        throw data::DataError(input.string() + ": holds both NIfTI cases and Kaggle slices; convert them separately");
    return inputs;
}

// "settings\n" then "<relative path>\t<bytes>\t<mtime ns>\n" per input file, sorted by path.
inline std::string source_manifest(const fs::path& input, const ConvertInputs& inputs, const std::string& settings) {
    std::vector<fs::path> files;
    for (const CaseFiles& c : inputs.nifti) {
        for (const fs::path& image : c.images)
            if (!image.empty()) files.push_back(image);
        if (!c.labels.empty()) files.push_back(c.labels);
    }
    for (const auto& [volume, slices] : inputs.kaggle)
        for (const auto& [slice, file] : slices) files.push_back(file);
    std::vector<std::string> lines;
    for (const fs::path& file : files) {
        std::error_code error;
        const auto bytes = fs::file_size(file, error);
        if (error) throw data::DataError(file.string() + ": cannot read its size (" + error.message() + ")");
        const auto written = fs::last_write_time(file, error);
        if (error) throw data::DataError(file.string() + ": cannot read its modification time (" + error.message() + ")");
        const auto nanoseconds = std::chrono::duration_cast<std::chrono::nanoseconds>(written.time_since_epoch()).count();
        lines.push_back(fs::relative(file, input).generic_string() + '\t' + std::to_string(bytes) + '\t' + std::to_string(nanoseconds));
    }
    std::sort(lines.begin(), lines.end());
    std::string text = settings + '\n';
    for (const std::string& line : lines) text += line + '\n';
    return text;
}

// What changed between two manifests, for a message ("2 files added (a, b); c rewritten"); empty
// when they are the same.
inline std::string manifest_difference(const std::string& recorded, const std::string& current) {
    auto parse = [](const std::string& manifest, std::string& settings) {
        std::map<std::string, std::string> files;
        std::istringstream in(manifest);
        std::getline(in, settings);
        for (std::string line; std::getline(in, line);) {
            const auto tab = line.find('\t');
            files[line.substr(0, tab)] = tab == std::string::npos ? "" : line.substr(tab + 1);
        }
        return files;
    };
    std::string recorded_settings, current_settings;
    const auto before = parse(recorded, recorded_settings), now = parse(current, current_settings);
    std::vector<std::string> added, removed, rewritten;
    for (const auto& [path, stamp] : now) {
        const auto it = before.find(path);
        if (it == before.end()) added.push_back(path);
        else if (it->second != stamp) rewritten.push_back(path);
    }
    for (const auto& [path, stamp] : before)
        if (!now.count(path)) removed.push_back(path);
    std::string text;
    auto note = [&](const std::vector<std::string>& paths, const char* what) {
        if (paths.empty()) return;
        std::string names;
        for (std::size_t i = 0; i < paths.size() && i < 3; ++i) names += (i ? ", " : "") + paths[i];
        if (paths.size() > 3) names += ", ...";
        text += (text.empty() ? "" : "; ") + std::to_string(paths.size()) + (paths.size() == 1 ? " file " : " files ") + what +
                " (" + names + ")";
    };
    if (recorded_settings != current_settings)
        text = "conversion settings differ (store: " + recorded_settings + "; now: " + current_settings + ")";
    note(added, "added");
    note(removed, "removed");
    note(rewritten, "rewritten");
    return text;
}

}  // namespace lightunet::io
