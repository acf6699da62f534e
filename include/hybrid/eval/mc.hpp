// Multiple-choice log-likelihood scoring as lm-evaluation-harness defines it: each choice's
// log-likelihood given the context, and acc / acc_norm / acc_bytes with their standard errors.
//
//   const std::vector<McItem> items = read_mc_jsonl("tests/fixtures/mc/arc_easy.jsonl");
//   const McResult r = evaluate_mc(model, tokenizer, items, McOptions{.bos = true});
//   r.metrics.acc.mean, r.metrics.acc.se;
//
// The file: JSON Lines, one item a line (blank lines skipped, other fields ignored):
//   {"context": "Question: ...\nAnswer:", "choices": ["a", "b", ...], "gold": 1}
// with an optional "target_delimiter" (default " ", lm-eval's), put before each choice: the
// continuation scored is delimiter + choice, the lengths that normalise are the choice's own.
//
// Tokens, as lm-eval's HF model does (api/model.py `_encode_pair`, `loglikelihood`):
//  - trailing whitespace of the context (Python's str.isspace set) moves to the front of the
//    continuation;
//  - whole = encode(context + continuation), ctx = encode(context), and the continuation's
//    tokens are whole[len(ctx):] (a merge across the boundary stays in the continuation; the
//    scored input is ctx + those tokens, as in lm-eval);
//  - bos: the tokenizer's BOS goes before ctx (lm-eval 0.4.13 encodes with the tokenizer's
//    default special tokens, which for LFM2 / Llama-3 tokenizer.json files put BOS first);
//  - an empty context becomes [BOS] (else [EOS]) with the continuation encoded alone, or, when
//    the continuation's first token is that id, the first token is the context;
//  - with a maximum length L (McOptions::max_length, else the model's max_context), the input
//    is (ctx + cont)[-(L + 1):][:-1]: truncated from the left, per choice.
// For the byte tokenizer every byte is a token, so the split is exactly at the string's
// boundary; for byte-level BPE it is at the token boundary above.
//
// Scoring goes through RuntimeModel::forward: the context (all but its last token) runs once
// per item into a decode state, then the choices run as one batch of B sequences continuing
// from copies of it (right-padded; a position's logits never see the padding after it), so the
// logits held are (B * longest continuation, V). Log-softmax in double.
//
// Metrics (lm-eval's multiple_choice process_results and mean_stderr): per item
//   pred = argmax_i ll_i,  pred_norm = argmax_i ll_i / chars_i,  pred_bytes = argmax_i ll_i / bytes_i
// (chars: Unicode code points of choice i, Python's len; bytes: its UTF-8 length; the first
// maximum wins, as numpy's argmax), acc = mean(pred == gold) over the items, and each
// stderr = sqrt(sum (x - mean)^2 / (n - 1) / n) (NaN for n < 2).
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../core/json.hpp"
#include "../core/utf8.hpp"
#include "../infer/tokenizer.hpp"
#include "../runtime_model.hpp"

namespace hybrid::eval {

struct McItem {
  std::string context;
  std::vector<std::string> choices;  // as the lengths count them, without the delimiter
  int gold = 0;
  std::string delimiter = " ";       // put before each choice when scoring
  Index line = 0;                    // 1-based line of the file, 0: not from a file
};

// ---- reading --------------------------------------------------------------------------------

// The items of JSONL text; `where` names the source in messages ("mc: 'file.jsonl'"), each
// error adds the line: "<where> line 3: "gold": 4 is out of range for 4 choices (expected 0..3)".
// limit > 0: stop after that many items.
inline std::vector<McItem> parse_mc_jsonl(std::string_view text, const std::string& where, Index limit = 0) {
  static constexpr const char* kExpected =
      "a JSON object {\"context\": string, \"choices\": [string, ...], \"gold\": integer}";
  std::vector<McItem> items;
  Index line_no = 0;
  for (std::size_t a = 0; a < text.size() && (limit <= 0 || Index(items.size()) < limit);) {
    std::size_t b = text.find('\n', a);
    if (b == std::string_view::npos) b = text.size();
    const std::string_view line = text.substr(a, b - a);
    a = b + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
    const std::string at = ::hybrid::detail::concat_str(where, " line ", line_no);
    const nlohmann::json j = parse_json(line, at, kExpected);
    const JsonFields f(at);
    McItem it;
    it.line = line_no;
    it.context = f.string(f.require(j, "context", "", "the context, a string"), "context");
    const nlohmann::json& ch = f.array(f.require(j, "choices", "", "an array of strings"), "choices",
                                       "an array of strings");
    HYBRID_CHECK(!ch.empty(), at, ": choices: the array is empty; expected at least one choice");
    for (std::size_t i = 0; i < ch.size(); ++i) {
      it.choices.push_back(f.string(ch[i], JsonFields::at("choices", i)));
      HYBRID_CHECK(!it.choices.back().empty(), at, ": choices[", i, "] is an empty string; acc_norm and "
                   "acc_bytes divide by a choice's length, so each needs at least one character");
    }
    const nlohmann::json& g = f.require(j, "gold", "", "the index of the right choice");
    HYBRID_CHECK(g.is_number_integer(), at, ": gold: expected an integer index, got ", json_brief(g));
    HYBRID_CHECK(JsonFields::is_integer_in(g, 0, std::int64_t(ch.size()) - 1), at, ": gold: ", json_brief(g),
                 " is out of range for ", ch.size(), " choice", ch.size() == 1 ? "" : "s", " (expected 0..",
                 ch.size() - 1, ")");
    it.gold = int(g.get<std::int64_t>());
    if (const nlohmann::json* d = f.find(j, "target_delimiter", "")) it.delimiter = f.string(*d, "target_delimiter");
    items.push_back(std::move(it));
  }
  HYBRID_CHECK(!items.empty(), where, ": no item (expected JSON Lines, ", kExpected, " on each line)");
  return items;
}

inline std::vector<McItem> read_mc_jsonl(const std::string& path, Index limit = 0) {
  const std::string text = read_file(path, "mc", "a JSONL file of multiple-choice items");
  return parse_mc_jsonl(text, "mc: '" + path + "'", limit);
}

// ---- lengths and the context / continuation split -------------------------------------------

// Characters as Python's len counts them: Unicode code points (the text is valid UTF-8, as
// JSON strings are after parsing).
inline Index utf8_chars(std::string_view s) {
  Index n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

// Python's str.isspace: the characters str.rstrip() removes.
inline bool python_space(std::uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The length of s without its trailing whitespace (Python's len(s.rstrip()), in bytes).
inline std::size_t rstrip_length(std::string_view s) {
  std::size_t end = 0;
  std::uint32_t cp = 0;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = next_utf8(s, i, cp);
    if (n == 0) {  // not UTF-8: the byte is not whitespace
      end = ++i;
      continue;
    }
    i += n;
    if (!python_space(cp)) end = i;
  }
  return end;
}

// One item in tokens: the context's ids and each choice's continuation ids.
struct McTokens {
  std::vector<int> context;
  std::vector<std::vector<int>> continuations;
};

// The token-level split described at the top of this file. bos: put the tokenizer's BOS first.
inline McTokens encode_mc_item(const Tokenizer& tok, const McItem& item, bool bos) {
  const auto where = [&](std::size_t i) {
    return ::hybrid::detail::concat_str("mc: item", item.line > 0 ? " at line " : "",
                                        item.line > 0 ? std::to_string(item.line) : std::string(), ", choice ", i);
  };
  HYBRID_CHECK(!bos || tok.bos().has_value(), "mc: bos: the tokenizer has no BOS id");
  McTokens t;
  if (item.context.empty()) {
    const std::optional<int> pre = tok.bos() ? tok.bos() : tok.eos();
    HYBRID_CHECK(pre.has_value(), "mc: item", item.line > 0 ? " at line " + std::to_string(item.line) : "",
                 " has an empty context, which is scored after the tokenizer's BOS (or EOS), and this "
                 "tokenizer has neither");
    for (std::size_t i = 0; i < item.choices.size(); ++i) {
      std::vector<int> c = tok.encode(item.delimiter + item.choices[i]);
      HYBRID_CHECK(!c.empty(), where(i), ": the continuation encodes to no token");
      if (c[0] == *pre) c.erase(c.begin());  // lm-eval: (cont[:1], cont[1:]), the same context
      HYBRID_CHECK(!c.empty(), where(i), ": the continuation is only the prefix token");
      t.continuations.push_back(std::move(c));
    }
    t.context = {*pre};
    return t;
  }
  const std::size_t keep = rstrip_length(item.context);
  const std::string ctx = item.context.substr(0, keep), moved = item.context.substr(keep);
  if (bos) t.context.push_back(*tok.bos());
  const std::vector<int> ce = tok.encode(ctx);
  t.context.insert(t.context.end(), ce.begin(), ce.end());
  HYBRID_CHECK(!t.context.empty(), "mc: item", item.line > 0 ? " at line " + std::to_string(item.line) : "",
               ": the context is only whitespace, so no token is left to condition on (give bos, or "
               "a context with text)");
  for (std::size_t i = 0; i < item.choices.size(); ++i) {
    const std::vector<int> whole = tok.encode(ctx + moved + item.delimiter + item.choices[i]);
    HYBRID_CHECK(whole.size() > ce.size(), where(i), ": context + continuation encode to ", whole.size(),
                 " tokens, no more than the context's ", ce.size(), ", so the continuation has no token");
    t.continuations.emplace_back(whole.begin() + std::ptrdiff_t(ce.size()), whole.end());
  }
  return t;
}

// ---- metrics --------------------------------------------------------------------------------

struct McStat {
  double mean = 0;
  double se = 0;  // standard error: sqrt(sample variance / n); NaN for n < 2
};

// lm-eval's mean and mean_stderr (sample standard deviation, n - 1, over sqrt(n)).
inline McStat mean_stderr(std::span<const double> x) {
  HYBRID_CHECK(!x.empty(), "mc: no item was scored");
  const double n = double(x.size());
  double s = 0;
  for (double v : x) s += v;
  McStat r;
  r.mean = s / n;
  if (x.size() < 2) {
    r.se = std::nan("");
    return r;
  }
  double ss = 0;
  for (double v : x) ss += (v - r.mean) * (v - r.mean);
  r.se = std::sqrt(ss / (n - 1)) / std::sqrt(n);
  return r;
}

// The first index of the largest ll_i / norm_i (norm empty: ll_i).
inline int argmax_over(std::span<const double> ll, std::span<const double> norm = {}) {
  int best = 0;
  for (std::size_t i = 1; i < ll.size(); ++i) {
    const double a = norm.empty() ? ll[i] : ll[i] / norm[i];
    const double b = norm.empty() ? ll[std::size_t(best)] : ll[std::size_t(best)] / norm[std::size_t(best)];
    if (a > b) best = int(i);
  }
  return best;
}

struct McItemScore {
  std::vector<double> logliks;  // one per choice: sum of log p(continuation tokens | context)
  std::vector<std::uint8_t> greedy;  // 1: every continuation token is the argmax at its position
  int pred = 0, pred_norm = 0, pred_bytes = 0;
};

struct McMetrics {
  Index items = 0;
  McStat acc, acc_norm, acc_bytes;
};

// Fills the three predictions of each scored item and returns the metrics.
inline McMetrics mc_metrics(const std::vector<McItem>& items, std::vector<McItemScore>& scores) {
  HYBRID_CHECK(items.size() == scores.size(), "mc_metrics: ", items.size(), " items but ", scores.size(), " scores");
  std::vector<double> acc, norm, bytes;
  for (std::size_t k = 0; k < items.size(); ++k) {
    const McItem& it = items[k];
    McItemScore& s = scores[k];
    HYBRID_CHECK(s.logliks.size() == it.choices.size(), "mc_metrics: item ", k, " has ", it.choices.size(),
                 " choices but ", s.logliks.size(), " log-likelihoods");
    std::vector<double> chars, nbytes;
    for (const std::string& c : it.choices) {
      chars.push_back(double(utf8_chars(c)));
      nbytes.push_back(double(c.size()));
    }
    s.pred = argmax_over(s.logliks);
    s.pred_norm = argmax_over(s.logliks, chars);
    s.pred_bytes = argmax_over(s.logliks, nbytes);
    acc.push_back(s.pred == it.gold ? 1.0 : 0.0);
    norm.push_back(s.pred_norm == it.gold ? 1.0 : 0.0);
    bytes.push_back(s.pred_bytes == it.gold ? 1.0 : 0.0);
  }
  McMetrics m;
  m.items = Index(items.size());
  m.acc = mean_stderr(acc);
  m.acc_norm = mean_stderr(norm);
  m.acc_bytes = mean_stderr(bytes);
  return m;
}

// ---- scoring --------------------------------------------------------------------------------

struct McOptions {
  bool bos = false;      // the tokenizer's BOS before every context
  Index max_length = 0;  // L: inputs per choice at most; 0 = the model's max_context (0: no limit)
  Index limit = 0;       // score the first N items only; 0 = all
};

struct McProgress {
  Index items_done = 0, items = 0;
  double seconds = 0;
};
using McProgressFn = std::function<void(const McProgress&)>;

struct McResult {
  McMetrics metrics;
  std::vector<McItemScore> items;
  Index choices = 0;  // requests scored
  Index tokens = 0;   // continuation tokens scored
  double seconds = 0;
};

// Scores the choices of one item at a time through forward(), keeping a non-recording tape
// whose memory is reused between items.
template <class S>
class McScorer {
 public:
  McScorer(const RuntimeModel<S>& model, Index max_length) : model_(model) {
    HYBRID_CHECK(max_length >= 0, "mc: max_length must be >= 0 (0 = the model's), got ", max_length);
    const Index ctx = model.spec().max_context;
    HYBRID_CHECK(ctx == 0 || max_length <= ctx, "mc: max_length ", max_length, " exceeds the model's maximum "
                 "context of ", ctx);
    L_ = max_length > 0 ? max_length : ctx;
  }

  Index max_length() const { return L_; }

  // Log-likelihood and greediness of each continuation after the context.
  McItemScore score(const McTokens& t, Index line = 0) {
    const int V = model_.vocab();
    const auto check_ids = [&](const std::vector<int>& ids, const char* what) {
      for (int id : ids)
        HYBRID_CHECK(id >= 0 && id < V, "mc: item", line > 0 ? " at line " + std::to_string(line) : "", ": ", what,
                     " token id ", id, " is outside the model's vocabulary [0, ", V, ")");
    };
    check_ids(t.context, "context");
    const Index nc = Index(t.context.size());
    HYBRID_CHECK(nc >= 1, "mc: an item needs at least one context token");
    McItemScore r;
    r.logliks.assign(t.continuations.size(), 0.0);
    r.greedy.assign(t.continuations.size(), 1);
    // Per choice: the first context token its input keeps (lm-eval's left truncation).
    std::vector<Index> start(t.continuations.size());
    for (std::size_t i = 0; i < t.continuations.size(); ++i) {
      check_ids(t.continuations[i], "continuation");
      const Index c = Index(t.continuations[i].size());
      HYBRID_CHECK(c >= 1, "mc: choice ", i, " has no continuation token");
      HYBRID_CHECK(L_ == 0 || c <= L_, "mc: item", line > 0 ? " at line " + std::to_string(line) : "", ", choice ",
                   i, ": the continuation is ", c, " tokens, longer than the maximum length ", L_);
      start[i] = L_ > 0 ? std::max<Index>(0, nc + c - (L_ + 1)) : 0;
    }
    // Choices sharing a start share the context's run (all of them without truncation).
    std::vector<std::uint8_t> done(t.continuations.size(), 0);
    for (std::size_t i = 0; i < t.continuations.size(); ++i) {
      if (done[i]) continue;
      std::vector<std::size_t> group;
      for (std::size_t j = i; j < t.continuations.size(); ++j)
        if (!done[j] && start[j] == start[i]) group.push_back(j), done[j] = 1;
      score_group(t, start[i], group, r);
    }
    return r;
  }

 private:
  // The context's tokens [s, nc - 1) into a state, then every choice of the group from a copy:
  // inputs ctx.back() + cont[:-1], targets cont.
  void score_group(const McTokens& t, Index s, const std::vector<std::size_t>& group, McItemScore& r) {
    const Index nc = Index(t.context.size());
    const Index B = Index(group.size());
    Index T = 0;
    for (std::size_t i : group) T = std::max(T, Index(t.continuations[i].size()));
    std::vector<SequenceState<S>> states;
    std::vector<SequenceState<S>*> ptrs;
    if (nc - 1 - s > 0) {
      SequenceState<S> st = model_.new_state(nc - 1 - s + T);
      SequenceState<S>* p = &st;
      model_.forward(std::span<const int>(t.context.data() + s, std::size_t(nc - 1 - s)), 1, nc - 1 - s, &p, false,
                     &tape_);
      states.assign(std::size_t(B), st);
      for (auto& x : states) ptrs.push_back(&x);
    }
    tokens_.assign(std::size_t(B * T), t.context.back());
    for (Index b = 0; b < B; ++b) {
      const std::vector<int>& c = t.continuations[group[std::size_t(b)]];
      int* row = tokens_.data() + b * T;
      row[0] = t.context.back();
      for (Index j = 1; j < Index(c.size()); ++j) row[j] = c[std::size_t(j - 1)];
      for (Index j = Index(c.size()); j < T; ++j) row[j] = row[j - 1];  // padding after the last input
    }
    const Mat<S> lg = model_.forward(tokens_, B, T, ptrs.empty() ? nullptr : ptrs.data(), true, &tape_);  // (B*T, V)
    for (Index b = 0; b < B; ++b) {
      const std::size_t i = group[std::size_t(b)];
      const std::vector<int>& c = t.continuations[i];
      double ll = 0;
      bool greedy = true;
      for (Index j = 0; j < Index(c.size()); ++j) {
        const auto row = lg.row(b * T + j);
        Index arg = 0;
        const double mx = double(row.maxCoeff(&arg));
        double sum = 0;
        for (Index v = 0; v < row.size(); ++v) sum += std::exp(double(row(v)) - mx);
        const int tgt = c[std::size_t(j)];
        ll += double(row(tgt)) - mx - std::log(sum);
        // lm-eval: the argmax token equals the target (a tie counts when the target is first).
        greedy = greedy && arg == tgt;
      }
      r.logliks[i] = ll;
      r.greedy[i] = greedy ? 1 : 0;
    }
  }

  const RuntimeModel<S>& model_;
  Index L_ = 0;
  Tape<S> tape_{false};
  std::vector<int> tokens_;  // (B, T)
};

namespace detail {
inline double mc_seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace detail

// Scores every item (or the first o.limit) and computes the metrics.
template <class S>
McResult evaluate_mc(const RuntimeModel<S>& model, const Tokenizer& tok, const std::vector<McItem>& all,
                     const McOptions& o = {}, const McProgressFn& progress = {}) {
  HYBRID_CHECK(o.limit >= 0, "mc: limit must be >= 0 (0 = all), got ", o.limit);
  HYBRID_CHECK(!all.empty(), "mc: no item to score");
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t n = o.limit > 0 ? std::min(all.size(), std::size_t(o.limit)) : all.size();
  const std::vector<McItem> items(all.begin(), all.begin() + std::ptrdiff_t(n));
  McScorer<S> scorer(model, o.max_length);
  McResult r;
  for (std::size_t k = 0; k < n; ++k) {
    const McTokens t = encode_mc_item(tok, items[k], o.bos);
    r.items.push_back(scorer.score(t, items[k].line));
    r.choices += Index(t.continuations.size());
    for (const auto& c : t.continuations) r.tokens += Index(c.size());
    if (progress) progress(McProgress{Index(k + 1), Index(n), detail::mc_seconds_since(t0)});
  }
  r.metrics = mc_metrics(items, r.items);
  r.seconds = detail::mc_seconds_since(t0);
  return r;
}

}  // namespace hybrid::eval
