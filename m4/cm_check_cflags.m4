# CM_CHECK_CFLAGS(FLAGS, [ACTION-IF-OK], [ACTION-IF-NOT])
# ------------------------------------------------------
# Checks that the C compiler accepts FLAGS (used for per-ISA kernel files,
# which are compiled with flags the rest of the program must not get).
AC_DEFUN([CM_CHECK_CFLAGS], [
  AC_MSG_CHECKING([whether $CC accepts $1])
  cm_save_CFLAGS="$CFLAGS"
  CFLAGS="$CFLAGS $1"
  AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[]], [[return 0;]])],
    [AC_MSG_RESULT([yes]); $2], [AC_MSG_RESULT([no]); $3])
  CFLAGS="$cm_save_CFLAGS"
])
