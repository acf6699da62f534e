// A new layout as one type alias, trained for 30 steps on associative recall, saved, loaded
// back and checked to give the same logits; only <hybrid/model.hpp>. Exit status 0 on success.
#include <cstdio>
#include <filesystem>

#include <hybrid/model.hpp>

using namespace hybrid;

using M = Block<Mamba2<Mamba2Spec{.d_state = 16, .expand = 2, .headdim = 16}>, SwiGLU<64>>;
using A = Block<GQA<GqaSpec{.n_heads = 2, .n_kv_heads = 1, .head_dim = 16}>, SwiGLU<64>>;
using MyNet = Model<Config<ModelSpec{.vocab = 258, .d_model = 32}>, Repeat<2, M>, A, M>;

int main() {
  static_assert(MyNet::layout == "MMAM");
  MyNet model(/*seed=*/3);
  data::MqarSource data({.vocab = 258, .n_pairs = 4, .n_queries = 4}, 1);
  train::TrainConfig cfg;
  cfg.batch = 4;
  cfg.seq_len = 32;
  cfg.steps = 30;
  train::Trainer<float> trainer(model, data, cfg);
  double first = 0, last = 0;
  for (int s = 0; s < 30; ++s) {
    const auto r = trainer.step();
    if (s == 0) first = r.loss;
    last = r.loss;
  }
  const std::string path = (std::filesystem::temp_directory_path() / "hybrid_new_alias.safetensors").string();
  save_model(model, path);
  const RuntimeModel<float> back = load_model<float>(path);
  std::filesystem::remove(path);
  const std::vector<int> ids{256, 3, 7, 1, 5, 0};
  const Mat<float> a = model.forward(ids, 1, 6), b = back.forward(ids, 1, 6);
  const double diff = (a - b).cwiseAbs().maxCoeff();
  std::printf("MyNet %s: %lld parameters, loss %.4f -> %.4f in 30 steps, reload max |diff| %g\n",
              std::string(MyNet::layout).c_str(), (long long)MyNet::n_params, first, last, diff);
  return diff == 0 && last < first ? 0 : 1;
}
