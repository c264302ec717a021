# Builds the standalone CUDA check programs (tests/cuda/check_*.cu); run through
# tests/cuda/build_checks.sh, which sets MODE (emulate | cuda), OUT and the OpenBLAS/CUDA paths.
# Each program links the whole C core (csrc/**/*.c but the Python binding) and the CUDA backend
# (csrc/backend/cuda/*.cu, plus the emulator in emulate mode). The backend is linked whole, so
# that a real entry overrides its weak stand-in of pending.cu (from an archive, the linker would
# stop at whichever member defines a symbol first); the core is an archive, so that a check
# pulls in only what it uses.

C_SRCS := $(shell find csrc -name '*.c' -not -path 'csrc/python/*' -not -name cuda_absent.c | sort)
CU_SRCS := $(sort $(wildcard csrc/backend/cuda/*.cu))
CHECK_SRCS := $(sort $(wildcard tests/cuda/check_*.cu))

OBJ := $(OUT)/obj
C_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(C_SRCS))
CU_OBJS := $(patsubst %.cu,$(OBJ)/%.o,$(CU_SRCS))
CHECK_OBJS := $(patsubst %.cu,$(OBJ)/%.o,$(CHECK_SRCS))
CHECKS := $(patsubst tests/cuda/%.cu,$(OUT)/%,$(CHECK_SRCS))

CC ?= gcc
CXX ?= g++
DEFS := -D_DEFAULT_SOURCE=1 -DMG_HAVE_CUDA=1
CFLAGS := -std=c11 -fopenmp -O2 -g -Wall -Wextra -Werror -I$(BLAS_INC) $(DEFS)
LDLIBS := -L$(BLAS_LIB_DIR) -l$(BLAS_LIB) -Wl,-rpath,$(BLAS_LIB_DIR) -lm

ifeq ($(MODE),emulate)
EMU_SRCS := $(sort $(wildcard csrc/backend/cuda/emulate/*.cc))
EMU_OBJS := $(patsubst %.cc,$(OBJ)/%.o,$(EMU_SRCS))
CFLAGS += -DMG_CUDA_EMULATE=1
CUFLAGS := -x c++ -std=c++17 -O2 -g -Wall -Wextra -Werror -DMG_CUDA_EMULATE=1 $(DEFS) -Icsrc
CUCOMPILE = $(CXX) $(CUFLAGS) -MMD -MP
LDLIBS += -lpthread
else
EMU_OBJS :=
CUFLAGS := -std=c++17 -O3 $(CUDA_ARCH_FLAGS) -Werror all-warnings -Xcompiler -Wall,-Wextra \
	$(DEFS) -Icsrc
CUCOMPILE = $(NVCC) $(CUFLAGS) -MMD -MP
LDLIBS += -L$(CUDA_LIB_DIR) -lcudart_static -ldl -lrt -lpthread
endif

all: $(CHECKS)

$(OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(OBJ)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(CUCOMPILE) -c $< -o $@

$(OBJ)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Werror $(DEFS) -DMG_CUDA_EMULATE=1 -MMD -MP -c $< -o $@

$(OUT)/libmg_core.a: $(C_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(OUT)/libmg_cuda.a: $(CU_OBJS) $(EMU_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(OUT)/%: $(OBJ)/tests/cuda/%.o $(OUT)/libmg_cuda.a $(OUT)/libmg_core.a
	$(CXX) -fopenmp $< -Wl,--whole-archive $(OUT)/libmg_cuda.a -Wl,--no-whole-archive \
		$(OUT)/libmg_core.a $(LDLIBS) -o $@

.PHONY: all
.SECONDARY:
-include $(shell find $(OBJ) -name '*.d' 2>/dev/null)
