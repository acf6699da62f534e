// Device-neutral strided views: a pointer, a shape (rows, cols) and a leading dimension
// (the row stride, >= cols), tagged with the device that owns the memory. Every op in ops/
// takes views; a column range of a wider matrix is a view with the wider ld, so splitting a
// projection's output (Mamba-2's z | xBC | dt) copies nothing. Views never own memory.
//
//   View<float> y(buf, T, 3 * D);          // (T, 3D), ld = 3D
//   View<float> b = y.col_range(D, D);     // (T, D), ld = 3D: the middle third
//
// Nothing here needs Eigen or nvcc; ops/eigen.hpp wraps a CPU view in an Eigen::Map.
#pragma once
#include <concepts>
#include <cstddef>
#include <type_traits>

#include "device.hpp"
#include "error.hpp"
#include "index.hpp"

namespace hybrid {

template <class S, class Dev = Cpu>
struct View {
  using Scalar = S;
  using Device = Dev;
  S* data = nullptr;
  Index rows = 0, cols = 0, ld = 0;

  View() = default;
  HYBRID_HOST_DEVICE View(S* p, Index r, Index c, Index ld_ = -1)
      : data(p), rows(r), cols(c), ld(ld_ < 0 ? c : ld_) {}
  // nullptr: "no buffer" (a gradient nobody wants); ops skip empty outputs.
  HYBRID_HOST_DEVICE View(std::nullptr_t) {}
  // A view of mutable data reads as a view of const data.
  template <class T>
    requires(std::is_same_v<const T, S> && !std::is_same_v<T, S>)
  HYBRID_HOST_DEVICE View(const View<T, Dev>& o) : data(o.data), rows(o.rows), cols(o.cols), ld(o.ld) {}
  // Any host row-major Eigen object with direct access and unit inner stride (Mat, Map, a
  // block of rows or columns, Ref) binds without a copy.
  template <class E, class B = std::remove_reference_t<E>>
    requires(std::is_same_v<Dev, Cpu> && requires(E&& e) {
      { e.data() } -> std::convertible_to<S*>;
      e.outerStride();
      B::IsRowMajor;
    })
  View(E&& e) : data(e.data()), rows(e.rows()), cols(e.cols()), ld(e.cols()) {
    static_assert(B::IsRowMajor || B::ColsAtCompileTime == 1 || B::RowsAtCompileTime == 1,
                  "View: bind a row-major Eigen matrix (hybrid::Mat), not a column-major one");
    if constexpr (B::IsRowMajor) {
      if (rows > 1) ld = e.outerStride();
      HYBRID_CHECK(cols <= 1 || e.innerStride() == 1, "View: the Eigen object has inner stride ",
                   e.innerStride(), "; views need contiguous rows");
    } else {
      ld = e.innerStride();  // a column vector (n, 1): element r sits r * innerStride along
    }
  }

  HYBRID_HOST_DEVICE Index size() const { return rows * cols; }
  HYBRID_HOST_DEVICE bool empty() const { return data == nullptr || size() == 0; }
  HYBRID_HOST_DEVICE explicit operator bool() const { return data != nullptr; }
  HYBRID_HOST_DEVICE bool contiguous() const { return ld == cols || rows <= 1; }
  HYBRID_HOST_DEVICE S& operator()(Index r, Index c) const { return data[r * ld + c]; }
  HYBRID_HOST_DEVICE S* row_ptr(Index r) const { return data + r * ld; }

  // Columns [c0, c0 + n): same rows, same ld (free).
  HYBRID_HOST_DEVICE View col_range(Index c0, Index n) const {
    return View(data ? data + c0 : nullptr, rows, n, ld);
  }
  // Rows [r0, r0 + n) (free).
  HYBRID_HOST_DEVICE View row_range(Index r0, Index n) const {
    return View(data ? data + r0 * ld : nullptr, n, cols, ld);
  }
  // The same contiguous buffer seen as (r, c).
  View reshape(Index r, Index c) const {
    HYBRID_CHECK(contiguous(), "reshape: a view with ld ", ld, " != cols ", cols,
                 " is not contiguous and cannot be reshaped");
    HYBRID_CHECK(r * c == size(), "reshape: (", rows, ", ", cols, ") has ", size(),
                 " entries, cannot view as (", r, ", ", c, ")");
    return View(data, r, c, c);
  }
};

template <class S, class Dev = Cpu>
using CView = View<const S, Dev>;

}  // namespace hybrid
