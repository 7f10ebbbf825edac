// vidaccel_train's program runner: ExecuTorch's C++ runtime (the Module API a phone app links),
// no Python, no torch. Built by vidaccel_train.export.target against the executorch wheel's
// headers and libraries, natively (x86_64) and cross for aarch64.
//
//   runner <program.pte> <clips.npy> <logits.npy> [threads]
//
// clips.npy: float32, C order, shape (N, C, T, H, W): the program's input, one clip at a time.
// logits.npy: float32, shape (N, classes). stdout: one JSON object: isa, features (what the
// runtime's CPU probe can see), clips, seconds (running the N clips, load excluded).
// Exit status: 0 done, 1 a runtime error (said on stderr), 2 a usage or file error.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#ifndef VIDACCEL_EXECUTORCH_VERSION
#define VIDACCEL_EXECUTORCH_VERSION "unknown"
#endif

// The wheel ships libexecutorch_threadpool.so but not threadpool.h: the two calls this runner needs.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  size_t get_thread_count() const;
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::from_blob;
using executorch::extension::module::Module;

namespace {

[[noreturn]] void fail(int code, const std::string& message) {
  std::fprintf(stderr, "runner: %s\n", message.c_str());
  std::exit(code);
}

// A float32 C-order .npy file: its shape and data.
struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

Array read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(2, "cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail(2, path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (!in) fail(2, path + ": truncated header");
  if (header.find("'descr': '<f4'") == std::string::npos) fail(2, path + ": not float32 ('<f4')");
  if (header.find("'fortran_order': False") == std::string::npos) fail(2, path + ": not C order");
  auto open = header.find("'shape': (");
  auto close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) fail(2, path + ": no shape");
  std::string dims = header.substr(open + 10, close - open - 10);
  Array array;
  size_t count = 1;
  std::stringstream parts(dims);
  std::string part;
  while (std::getline(parts, part, ',')) {
    if (part.find_first_not_of(' ') == std::string::npos) continue;
    array.shape.push_back(std::stoll(part));
    count *= static_cast<size_t>(array.shape.back());
  }
  array.data.resize(count);
  in.read(reinterpret_cast<char*>(array.data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (!in) fail(2, path + ": shorter than its shape says");
  return array;
}

void write_npy(const std::string& path, const std::vector<float>& data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) fail(2, "cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len16 = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len16), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) fail(2, "cannot write " + path);
}

// The CPU features that pick XNNPACK's kernels, as the kernel reports them to this process
// (under qemu-user: the emulated core's).
std::vector<std::string> cpu_features() {
  std::vector<std::string> found;
#if defined(__aarch64__)
  const unsigned long hwcap = getauxval(AT_HWCAP);
  const unsigned long hwcap2 = getauxval(AT_HWCAP2);
  const struct {
    const char* name;
    bool second;
    unsigned long bit;
  } known[] = {
      {"asimd", false, 1UL << 1},    {"asimdhp", false, 1UL << 10}, {"asimddp", false, 1UL << 20},
      {"sve", false, 1UL << 22},     {"sve2", true, 1UL << 1},      {"svei8mm", true, 1UL << 9},
      {"i8mm", true, 1UL << 13},     {"bf16", true, 1UL << 14},     {"sme", true, 1UL << 23},
      {"sme2", true, 1UL << 37},
  };
  for (const auto& feature : known) {
    if (((feature.second ? hwcap2 : hwcap) & feature.bit) != 0) found.push_back(feature.name);
  }
#elif defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) found.push_back("avx2");
  if (__builtin_cpu_supports("avx512f")) found.push_back("avx512f");
  if (__builtin_cpu_supports("avx512vnni")) found.push_back("avx512vnni");
  if (__builtin_cpu_supports("avxvnni")) found.push_back("avxvnni");
#endif
  return found;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    fail(2, "usage: runner <program.pte> <clips.npy> <logits.npy> [threads]");
  }
  const std::string program = argv[1];
  const Array clips = read_npy(argv[2]);
  if (clips.shape.size() < 2) fail(2, std::string(argv[2]) + ": want (N, ...) clips");
  if (argc == 5) {
    const int threads = std::atoi(argv[4]);
    if (threads < 1) fail(2, "threads must be at least 1");
    executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);
  }

  Module module(program, Module::LoadMode::File);
  if (module.load_method("forward") != executorch::runtime::Error::Ok) {
    fail(1, program + ": ExecuTorch could not load method 'forward'");
  }
  const int64_t n = clips.shape[0];
  std::vector<executorch::aten::SizesType> sizes = {1};
  size_t per_clip = 1;
  for (size_t i = 1; i < clips.shape.size(); ++i) {
    sizes.push_back(static_cast<executorch::aten::SizesType>(clips.shape[i]));
    per_clip *= static_cast<size_t>(clips.shape[i]);
  }
  std::vector<float> logits;
  int64_t classes = 0;
  std::vector<float> clip(per_clip);
  const auto started = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(clip.data(), clips.data.data() + i * per_clip, per_clip * sizeof(float));
    auto input = from_blob(clip.data(), sizes, executorch::aten::ScalarType::Float);
    const auto result = module.forward(input);
    if (!result.ok()) fail(1, program + ": forward failed on clip " + std::to_string(i));
    const auto& output = result->at(0).toTensor();
    if (i == 0) classes = output.numel();
    if (output.numel() != classes) fail(1, "the program's output size changed between clips");
    const float* values = output.const_data_ptr<float>();
    logits.insert(logits.end(), values, values + classes);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  write_npy(argv[3], logits, n, classes);

  std::string features;
  for (const auto& feature : cpu_features()) features += (features.empty() ? "\"" : ", \"") + feature + "\"";
#if defined(__aarch64__)
  const char* isa = "aarch64";
#elif defined(__x86_64__)
  const char* isa = "x86_64";
#else
  const char* isa = "unknown";
#endif
  std::printf("{\"isa\": \"%s\", \"runtime\": \"executorch %s\", \"features\": [%s], \"clips\": %lld, \"seconds\": %.6f}\n",
              isa, VIDACCEL_EXECUTORCH_VERSION, features.c_str(), static_cast<long long>(n), seconds);
  return 0;
}
