# Finds candex's fixed dependencies: Faiss C API, nng, protobuf-c, lz4 (+ jansson).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS C)
find_package(nng 1.5 CONFIG REQUIRED)
pkg_check_modules(PROTOBUFC REQUIRED IMPORTED_TARGET libprotobuf-c)
pkg_check_modules(LZ4 REQUIRED IMPORTED_TARGET liblz4)
pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
find_program(PROTOC_C NAMES protoc-c protoc-gen-c REQUIRED)

# Faiss with the C API: from CANDEX_FAISS_PREFIX (tools/setup-deps.sh builds it
# there), else wherever the system has one.
find_path(FAISS_C_INCLUDE_DIR faiss/c_api/faiss_c.h
  HINTS ${CANDEX_FAISS_PREFIX}/include $ENV{CANDEX_FAISS_PREFIX}/include)
find_library(FAISS_C_LIBRARY NAMES faiss_c
  HINTS ${CANDEX_FAISS_PREFIX}/lib $ENV{CANDEX_FAISS_PREFIX}/lib)
find_library(FAISS_LIBRARY NAMES faiss
  HINTS ${CANDEX_FAISS_PREFIX}/lib $ENV{CANDEX_FAISS_PREFIX}/lib)
if(NOT FAISS_C_INCLUDE_DIR OR NOT FAISS_C_LIBRARY OR NOT FAISS_LIBRARY)
  message(FATAL_ERROR "Faiss C API not found: run tools/setup-deps.sh and pass "
    "-DCANDEX_FAISS_PREFIX=<the prefix it prints>")
endif()
message(STATUS "Faiss C API: ${FAISS_C_LIBRARY}")
add_library(faiss_c_api INTERFACE)
target_include_directories(faiss_c_api SYSTEM INTERFACE ${FAISS_C_INCLUDE_DIR})
target_link_libraries(faiss_c_api INTERFACE ${FAISS_C_LIBRARY} ${FAISS_LIBRARY})
