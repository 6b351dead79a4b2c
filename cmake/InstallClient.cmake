# Install rules of the client library (component "client"):
#   lib/libcandex-client.so.*, lib/libcandex-client.a,
#   include/candex/{client,err}.h, lib/pkgconfig/candex-client.pc
#
#   cmake --install build --component client --prefix /opt/candex
#   PKG_CONFIG_PATH=/opt/candex/lib/pkgconfig cc app.c $(pkg-config --cflags --libs candex-client)
#
# The library depends on nng and protobuf-c only. The .pc file finds its
# prefix from its own location, so the tree can be installed or moved anywhere.
# (GNUInstallDirs is included by the top-level CMakeLists.txt.)

install(TARGETS candex_client_shared candex_client_static
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT client
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT client)
install(FILES include/candex/client.h include/candex/err.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/candex COMPONENT client)

file(RELATIVE_PATH CANDEX_PC_PREFIX_REL
  /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" CANDEX_PC_PREFIX_REL "${CANDEX_PC_PREFIX_REL}")
configure_file(cmake/candex-client.pc.in ${CMAKE_BINARY_DIR}/candex-client.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/candex-client.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT client)
