// The op-case table drives the gradient checks: every case of every op against central
// differences in double precision, through the same tape entry points the models use; and
// every op a Tiny model records must have a row with a backward and at least one case.
#include <doctest/doctest.h>

#include <hybrid/alias_registry.hpp>
#include <hybrid/autograd/op_cases.hpp>
#include <hybrid/runtime_model.hpp>

#include "grad_check.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_op_cases {

namespace {

// Ops in `seen` that lack a row with a backward, or any case: what the coverage test reports.
std::vector<std::string> uncovered(const std::vector<OpId>& seen, std::span<const OpRow> rows,
                                   const std::vector<OpCase>& cases) {
  std::vector<std::string> out;
  for (OpId op : seen) {
    bool row = false, has_case = false;
    for (const OpRow& r : rows) row = row || (r.op == op && r.backward);
    for (const OpCase& c : cases) has_case = has_case || c.op == op;
    if (!row || (!has_case && op != OpId::Checkpoint)) out.emplace_back(op_name(op));
  }
  return out;
}

// Every op id the Tiny aliases (and TinyGolfOptions, the golf-entry options, which the
// registry does not list) record in a forward + backward of the loss.
std::vector<OpId> ops_of_tiny_models() {
  std::vector<bool> seen(kOpCount, false);
  std::vector<ModelDesc> descs{TinyGolfOptions::desc()};
  for (const AliasInfo& a : shipped_aliases())
    if (std::string_view(a.name).rfind("Tiny", 0) == 0) descs.push_back(a.desc());
  for (const ModelDesc& d : descs) {
    RuntimeModel<double> m(d, 3);
    GradStore<double> grads(m);
    Tape<double> t(true, &grads);
    std::vector<int> toks(2 * 6), tg(2 * 6);
    for (int i = 0; i < 12; ++i) toks[i] = (i * 7 + 1) % m.vocab(), tg[i] = (i * 5 + 2) % m.vocab();
    t.backward(m.loss(t, toks, tg, 2, 6));
    t.for_each_op([&](OpId op) { seen[std::size_t(op)] = true; });
  }
  std::vector<OpId> out;
  for (int i = 0; i < kOpCount; ++i)
    if (seen[std::size_t(i)]) out.push_back(OpId(i));
  return out;
}

}  // namespace

TEST_CASE("op cases: every case's backward matches central differences (double)") {
  int n_cases = 0;
  for (const OpCase& c : op_cases()) {
    CAPTURE(std::string(op_name(c.op)));
    CAPTURE(std::string(c.label));
    OpCaseRun<double> run(c, 11);
    Tape<double> tape(true, &run.grads());
    const Var<double> y = run.forward(tape);
    const Mat<double> r = testing::random_weights(y.rows, y.cols, 5);  // L = sum(r ⊙ y)
    y.grad() += r;
    tape.sweep();
    Tape<double> eval(true);  // a tape that records, so drop masks and scratch match
    auto L = [&] {
      eval.rewind();
      const Var<double> ye = run.forward(eval);
      return (ye.val().array() * r.array()).sum();
    };
    for (const ParamInfo& e : run.grads().entries()) {
      CAPTURE(e.name);
      const auto res = testing::fd_check(run.grads().value_of(e).data(), run.grads().grad_of(e),
                                         e.size(), L, 48, 1e-6, 1e-4);
      CHECK(res.max_abs_err < 1e-6);
      CHECK(res.max_rel_err < 1e-4);
    }
    ++n_cases;
  }
  CHECK(n_cases >= 60);
}

TEST_CASE("op cases: every op the Tiny models record has a row, a backward and a case") {
  const std::vector<OpId> seen = ops_of_tiny_models();
  CHECK(seen.size() >= 15);
  const std::vector<OpCase> cases = op_cases();
  const auto missing = uncovered(seen, op_rows, cases);
  CHECK_MESSAGE(missing.empty(), "ops without a row or case: ", missing.size(),
                missing.empty() ? "" : (" first: " + missing[0]).c_str());
  // The check can fail: drop the rmsnorm row, or every rmsnorm case, and it names rmsnorm.
  std::vector<OpRow> fewer;
  for (const OpRow& r : op_rows)
    if (r.op != OpId::RmsNorm) fewer.push_back(r);
  CHECK(uncovered(seen, fewer, cases) == std::vector<std::string>{"rmsnorm"});
  std::vector<OpCase> no_rms;
  for (const OpCase& c : cases)
    if (c.op != OpId::RmsNorm) no_rms.push_back(c);
  CHECK(uncovered(seen, op_rows, no_rms) == std::vector<std::string>{"rmsnorm"});
  // Every row is in OpId order, one per id.
  for (int i = 0; i < kOpCount; ++i) CHECK(op_rows[std::size_t(i)].op == OpId(i));
}

}  // namespace hybrid_test_op_cases
