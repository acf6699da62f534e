// RuntimeModel<float> compiled once for the project's own programs (HYBRID_EXPLICIT_INSTANTIATION).
#include <hybrid/runtime_model.hpp>

template class hybrid::RuntimeModel<float>;
