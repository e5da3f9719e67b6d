/* backend_vulkan.c - the Vulkan backend: any GPU a laptop has (and Mesa's
 * lavapipe on the CPU, which CI tests on).
 *
 * What it has: device selection, memory, the KV cache (F32, F16, Q8_0),
 * attention, norms, RoPE, the activations, residual adds, the MoE row
 * moves, and the products (matmul, logits) and embeddings of every weight
 * type, as compute shaders (backends/vulkan/shaders, compiled to SPIR-V by
 * glslc at build time and embedded).  The products have the reference's
 * arithmetic: activations quantized to q8_0/q8_1/q8_K for the quantized
 * weights, integer block dots, then the scales.  The routing is decided on
 * the host from the router's logits as the CPU decides it (vk_route), as
 * the backend's own op.  The device's optional features (16-bit and 8-bit
 * storage, half arithmetic, integer dots, subgroup operations, cooperative
 * matrices, heap sizes) are asked at start-up (query_features) and kept
 * in st->feat, for info --devices and for choosing shaders by feature;
 * none is required.
 *
 * Ops are recorded, not run (record.c: a batch's dispatches in one
 * command buffer with barriers between dependent ones, submitted where the
 * host needs results or is about to write what they read; generation steps
 * recorded once and replayed).  So buffers have no host
 * address for the engine (buf->host NULL: backend.h's contract for memory
 * the CPU cannot read at any time); they live in device-local memory,
 * mapped where the host can map it (integrated GPUs, lavapipe), else
 * reached through a staging buffer.  Descriptor sets are made once per
 * binding and kept. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vulkan/vulkan.h>

#include "backends/cpu/ops.h"
#include "backends/vulkan/vk_internal.h"


static cm_status vk_fail(cm_err *err, VkResult r, const char *what)
{
    return cm_fail(err, r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY
                            ? CM_E_NOMEM : CM_E_UNSUPPORTED,
                   "vulkan: %s failed (VkResult %d)", what, (int)r);
}

/* An op has no status to return: a failed dispatch is a broken device,
 * reported and fatal, never a silently wrong answer. */
void vk_check(VkResult r, const char *what)
{
    if (r != VK_SUCCESS) {
        fprintf(stderr, "codemoe: vulkan: %s failed (VkResult %d)\n", what, (int)r);
        exit(1);
    }
}

/* With CODEMOE_VULKAN_VALIDATION=1 the Khronos validation layer checks
 * every call, and the synchronization of the recorded batches where it
 * can; an error it reports ends the program (tests run this way). */
static VKAPI_ATTR VkBool32 VKAPI_CALL on_validation(VkDebugUtilsMessageSeverityFlagBitsEXT sev,
                                                    VkDebugUtilsMessageTypeFlagsEXT type,
                                                    const VkDebugUtilsMessengerCallbackDataEXT *d,
                                                    void *user)
{
    (void)type, (void)user;
    if (sev >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) {
        fprintf(stderr, "codemoe: vulkan validation: %s\n", d->pMessage);
        abort();
    }
    return VK_FALSE;
}

static int validation_wanted(void)
{
    const char *v = getenv("CODEMOE_VULKAN_VALIDATION");
    return v && !strcmp(v, "1");
}

/* ------------------------------------------------------------ devices */

/* Whether the validation layer offers VK_EXT_validation_features (then
 * its synchronization validation is turned on too: a missing barrier
 * between recorded dispatches is an error like any other). */
static int has_validation_features(const char *layer)
{
    uint32_t n = 0;
    if (vkEnumerateInstanceExtensionProperties(layer, &n, NULL) != VK_SUCCESS || n == 0)
        return 0;
    VkExtensionProperties *e = calloc(n, sizeof *e);
    int found = 0;
    if (e && vkEnumerateInstanceExtensionProperties(layer, &n, e) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !found; i++)
            found = !strcmp(e[i].extensionName, VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME);
    free(e);
    return found;
}

static VkResult create_instance(VkInstance *inst, int *validated)
{
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .pApplicationName = "codemoe",
                             .apiVersion = VK_APP_API};
    const char *layer = "VK_LAYER_KHRONOS_validation";
    const char *ext[2] = {VK_EXT_DEBUG_UTILS_EXTENSION_NAME,
                          VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME};
    const int val = validation_wanted(), sync = val && has_validation_features(layer);
    const VkValidationFeatureEnableEXT en =
        VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT;
    VkValidationFeaturesEXT vf = {.sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
                                  .enabledValidationFeatureCount = 1,
                                  .pEnabledValidationFeatures = &en};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                               .pNext = sync ? &vf : NULL,
                               .pApplicationInfo = &app,
                               .enabledLayerCount = val,
                               .ppEnabledLayerNames = &layer,
                               .enabledExtensionCount = (uint32_t)(val + sync),
                               .ppEnabledExtensionNames = ext};
    VkResult r = vkCreateInstance(&ci, NULL, inst);
    *validated = val && r == VK_SUCCESS;
    if (r == VK_ERROR_LAYER_NOT_PRESENT || r == VK_ERROR_EXTENSION_NOT_PRESENT) {
        fprintf(stderr, "[codemoe] CODEMOE_VULKAN_VALIDATION=1, but the Khronos validation layer "
                        "is not installed (vulkan-validationlayers): running without it\n");
        ci.enabledLayerCount = ci.enabledExtensionCount = 0;
        ci.pNext = NULL;
        return vkCreateInstance(&ci, NULL, inst);
    }
    return r;
}

/* The process's instance, made by the first backend and kept until exit:
 * NVIDIA's driver refuses vkCreateInstance (-9, incompatible driver) after
 * many create-and-destroy cycles in one process (tests/test_backend makes
 * hundreds of backends), so backends share one and each makes and destroys
 * only its device and debug messenger.  Written once, under pthread_once. */
static struct {
    pthread_once_t once;
    VkInstance inst;
    int validated; /* made with the validation layer */
    VkResult r;
} process_vk = {PTHREAD_ONCE_INIT, VK_NULL_HANDLE, 0, VK_SUCCESS};

static void make_process_instance(void)
{
    process_vk.r = create_instance(&process_vk.inst, &process_vk.validated);
}

/* The shared instance, and the validation layer's messenger where asked. */
static VkResult make_instance(vk_state *st)
{
    pthread_once(&process_vk.once, make_process_instance);
    if (process_vk.r != VK_SUCCESS)
        return process_vk.r;
    st->inst = process_vk.inst;
    if (!process_vk.validated)
        return VK_SUCCESS;
    PFN_vkCreateDebugUtilsMessengerEXT create =
        (PFN_vkCreateDebugUtilsMessengerEXT)vkGetInstanceProcAddr(st->inst,
                                                                   "vkCreateDebugUtilsMessengerEXT");
    VkDebugUtilsMessengerCreateInfoEXT mi = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT,
        .pfnUserCallback = on_validation};
    return create ? create(st->inst, &mi, NULL, &st->messenger) : VK_ERROR_EXTENSION_NOT_PRESENT;
}

/* Devices in order of preference: discrete, integrated, virtual, CPU;
 * CODEMOE_VULKAN_DEVICE=N picks the N-th of vkEnumeratePhysicalDevices. */
static int device_rank(VkPhysicalDeviceType t)
{
    return t == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU ? 0
           : t == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU ? 1
           : t == VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU ? 2 : 3;
}

static cm_status pick_device(vk_state *st, int device, cm_err *err)
{
    uint32_t n = 0;
    VkPhysicalDevice devs[16];
    vkEnumeratePhysicalDevices(st->inst, &n, NULL);
    n = n > 16 ? 16 : n;
    if (n == 0 || vkEnumeratePhysicalDevices(st->inst, &n, devs) < 0)
        return cm_fail(err, CM_E_UNSUPPORTED, "vulkan: no device (install a driver, e.g. "
                       "mesa-vulkan-drivers)");
    const char *want = getenv("CODEMOE_VULKAN_DEVICE");
    if (device < 0 && want && *want) {
        char *end;
        device = (int)strtol(want, &end, 10);
        if (*end || device < 0)
            return cm_fail(err, CM_E_USAGE, "CODEMOE_VULKAN_DEVICE=%.20s is not a number", want);
    }
    if (device >= 0) {
        if (device >= (int)n)
            return cm_fail(err, CM_E_USAGE, "vulkan: device %d: there are %u (0..%u; codemoe "
                           "info --devices)", device, n, n - 1);
        st->phys = devs[device];
        return CM_OK;
    }
    int best = 4;
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties p;
        vkGetPhysicalDeviceProperties(devs[i], &p);
        if (device_rank(p.deviceType) < best)
            best = device_rank(p.deviceType), st->phys = devs[i];
    }
    return CM_OK;
}

/* ------------------------------------------------------------ features */

/* A device's extensions, for the queries' guards. */
typedef struct {
    VkExtensionProperties *e;
    uint32_t n;
    uint32_t api; /* the device's version */
} ext_list;

static void exts_of(VkPhysicalDevice phys, uint32_t api, ext_list *x)
{
    *x = (ext_list){NULL, 0, api};
    if (vkEnumerateDeviceExtensionProperties(phys, NULL, &x->n, NULL) != VK_SUCCESS || !x->n)
        return;
    x->e = calloc(x->n, sizeof *x->e);
    if (!x->e || vkEnumerateDeviceExtensionProperties(phys, NULL, &x->n, x->e) < 0)
        x->n = 0;
}

/* Whether a query structure of extension `name`, promoted to core in
 * version `core` (0: not promoted), may be chained: the device lists the
 * extension, or it and the instance (VK_APP_API) both have that version.
 * Chaining it otherwise is invalid usage, which a driver may crash on. */
static int usable(const ext_list *x, const char *name, uint32_t core)
{
    for (uint32_t i = 0; i < x->n; i++)
        if (!strcmp(x->e[i].extensionName, name))
            return 1;
    return core && x->api >= core && VK_APP_API >= core;
}

/* Appends structure s to the query chain ending at *tail. */
static void chain(VkBaseOutStructure **tail, void *s)
{
    (*tail)->pNext = s;
    *tail = s;
}

/* Device-local heaps, and heaps with a host-visible memory type (a heap
 * may be both, as on integrated GPUs and lavapipe). */
static void heap_sizes(VkPhysicalDevice phys, vk_features *f)
{
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(phys, &mp);
    for (uint32_t h = 0; h < mp.memoryHeapCount; h++) {
        int host = 0;
        for (uint32_t i = 0; i < mp.memoryTypeCount; i++)
            host |= mp.memoryTypes[i].heapIndex == h &&
                    (mp.memoryTypes[i].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT);
        if (mp.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
            f->local_bytes += mp.memoryHeaps[h].size;
        if (host)
            f->host_bytes += mp.memoryHeaps[h].size;
    }
}

/* Storage widths, half and int8 arithmetic, integer dot products and
 * subgroups: one Features2 and one Properties2 chain, each structure in it
 * only where usable() says so (absent ones read as "no"). */
static void query_chains(const ext_list *x, VkPhysicalDevice phys, vk_features *f)
{
    VkPhysicalDevice16BitStorageFeatures s16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    VkPhysicalDevice8BitStorageFeatures s8 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES};
    VkPhysicalDeviceShaderFloat16Int8Features h8 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
    VkPhysicalDeviceShaderIntegerDotProductFeatures dot = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES};
    VkPhysicalDeviceSubgroupSizeControlFeatures ssc = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_FEATURES};
    VkPhysicalDeviceVulkanMemoryModelFeatures mm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_MEMORY_MODEL_FEATURES};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
    VkPhysicalDeviceSubgroupProperties sg = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceShaderIntegerDotProductProperties dotp = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_PROPERTIES};
    VkPhysicalDeviceSubgroupSizeControlProperties sscp = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    VkBaseOutStructure *ft = (VkBaseOutStructure *)&f2, *pt = (VkBaseOutStructure *)&p2;
    const int has8 = usable(x, VK_KHR_8BIT_STORAGE_EXTENSION_NAME, VK_API_VERSION_1_2);
    const int has_h8 = usable(x, VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME, VK_API_VERSION_1_2);
    const int has_dot = usable(x, VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME,
                               VK_API_VERSION_1_3);
    const int has_ssc = usable(x, VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME, VK_API_VERSION_1_3);
    const int has_mm = usable(x, VK_KHR_VULKAN_MEMORY_MODEL_EXTENSION_NAME, VK_API_VERSION_1_2);
    chain(&ft, &s16); /* core in 1.1, as are the subgroup properties */
    chain(&pt, &sg);
    if (has8)
        chain(&ft, &s8);
    if (has_h8)
        chain(&ft, &h8);
    if (has_dot)
        chain(&ft, &dot), chain(&pt, &dotp);
    if (has_ssc)
        chain(&ft, &ssc), chain(&pt, &sscp);
    if (has_mm)
        chain(&ft, &mm);
    vkGetPhysicalDeviceFeatures2(phys, &f2);
    vkGetPhysicalDeviceProperties2(phys, &p2);
    f->f16_storage = s16.storageBuffer16BitAccess;
    f->i8_storage = s8.storageBuffer8BitAccess;
    f->f16_math = h8.shaderFloat16;
    f->i8_math = h8.shaderInt8;
    f->int_dot = dot.shaderIntegerDotProduct;
    f->int_dot_fast = f->int_dot && dotp.integerDotProduct4x8BitPackedSignedAccelerated;
    f->mem_model = mm.vulkanMemoryModel;
    f->subgroup_size = sg.subgroupSize;
    /* the operations count only where compute shaders have them */
    f->subgroup_ops = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) ? sg.supportedOperations
                                                                         : 0;
    if (ssc.subgroupSizeControl && (sscp.requiredSubgroupSizeStages & VK_SHADER_STAGE_COMPUTE_BIT))
        f->subgroup_min = sscp.minSubgroupSize, f->subgroup_max = sscp.maxSubgroupSize;
}

#ifdef VK_KHR_cooperative_matrix
/* The subgroup-scope shapes the device multiplies (the first few). */
static void query_coopmat(const ext_list *x, VkInstance inst, VkPhysicalDevice phys,
                          vk_features *f)
{
    if (!usable(x, VK_KHR_COOPERATIVE_MATRIX_EXTENSION_NAME, 0))
        return;
    VkPhysicalDeviceCooperativeMatrixFeaturesKHR cf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                    .pNext = &cf};
    vkGetPhysicalDeviceFeatures2(phys, &f2);
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR get =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR)vkGetInstanceProcAddr(
            inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR");
    uint32_t n = 0;
    if (!cf.cooperativeMatrix || !get)
        return;
    f->coopmat = 1;
    if (get(phys, &n, NULL) != VK_SUCCESS || !n)
        return;
    VkCooperativeMatrixPropertiesKHR *p = calloc(n, sizeof *p);
    for (uint32_t i = 0; p && i < n; i++)
        p[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR;
    if (p && get(phys, &n, p) >= 0)
        for (uint32_t i = 0; i < n && f->n_coopmat < VK_COOPMAT_MAX; i++)
            if (p[i].scope == VK_SCOPE_SUBGROUP_KHR)
                f->coopmat_shapes[f->n_coopmat++] = (vk_coopmat_shape){
                    p[i].MSize, p[i].NSize, p[i].KSize, (int)p[i].AType, (int)p[i].ResultType};
    free(p);
}
#else
/* Vulkan headers before 1.3.255 cannot ask: the extension's name only. */
static void query_coopmat(const ext_list *x, VkInstance inst, VkPhysicalDevice phys,
                          vk_features *f)
{
    (void)inst, (void)phys;
    f->coopmat = usable(x, "VK_KHR_cooperative_matrix", 0) ? -1 : 0;
}
#endif

/* NVIDIA's cooperative matrices: the subgroup-scope shapes it lists. */
static void query_coop_nv(const ext_list *x, VkInstance inst, VkPhysicalDevice phys,
                          vk_features *f)
{
    if (!usable(x, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME, 0))
        return;
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                    .pNext = &cf};
    vkGetPhysicalDeviceFeatures2(phys, &f2);
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV get =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)vkGetInstanceProcAddr(
            inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
    uint32_t n = 0;
    if (!cf.cooperativeMatrix || !get || get(phys, &n, NULL) != VK_SUCCESS || !n)
        return;
    VkCooperativeMatrixPropertiesNV *p = calloc(n, sizeof *p);
    for (uint32_t i = 0; p && i < n; i++)
        p[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV;
    if (p && get(phys, &n, p) >= 0)
        for (uint32_t i = 0; i < n && f->n_nv < VK_COOPMAT_MAX; i++)
            if (p[i].scope == VK_SCOPE_SUBGROUP_NV)
                f->nv_shapes[f->n_nv++] = (vk_coopmat_shape){
                    p[i].MSize, p[i].NSize, p[i].KSize, (int)p[i].AType, (int)p[i].DType};
    free(p);
}

/* Everything vk_features holds, for the device phys of instance inst. */
static void query_features(VkInstance inst, VkPhysicalDevice phys, vk_features *f)
{
    VkPhysicalDeviceProperties p;
    VkPhysicalDeviceFeatures ft;
    memset(f, 0, sizeof *f);
    vkGetPhysicalDeviceProperties(phys, &p);
    vkGetPhysicalDeviceFeatures(phys, &ft);
    f->api = p.apiVersion;
    f->f64 = ft.shaderFloat64;
    heap_sizes(phys, f);
    if (p.apiVersion < VK_API_VERSION_1_1)
        return; /* no Features2 for it: the instance has 1.1, not the extension */
    ext_list x;
    exts_of(phys, p.apiVersion, &x);
    query_chains(&x, phys, f);
    query_coopmat(&x, inst, phys, f);
    query_coop_nv(&x, inst, phys, f);
    free(x.e);
}

/* Host-visible, coherent memory (device-local too where the device has
 * such a heap), for what the CPU writes or reads in place (row lists, the
 * rotary table, the logits on their way out, the staging buffer); and the
 * memory of the weights, activations, cache and scratch: that same type
 * where it is device-local (integrated GPUs, lavapipe, a large BAR), else
 * the largest device-local heap, which the CPU reaches through copies
 * (vk_upload, vk_download): shaders never read a discrete GPU's weights
 * across the bus. */
static void pick_read_memory(vk_state *st, const VkPhysicalDeviceMemoryProperties *mp)
{
    const VkMemoryPropertyFlags need = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                       VK_MEMORY_PROPERTY_HOST_COHERENT_BIT |
                                       VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
    int best = -1;
    for (uint32_t i = 0; i < mp->memoryTypeCount; i++) {
        const VkMemoryPropertyFlags f = mp->memoryTypes[i].propertyFlags;
        if ((f & need) == need && (best < 0 || !(f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)))
            best = (int)i;
    }
    st->read_type = best >= 0 ? (uint32_t)best : st->host_type;
    st->slow_reads = st->read_type != st->host_type &&
                     (mp->memoryTypes[st->host_type].propertyFlags & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) &&
                     !(mp->memoryTypes[st->host_type].propertyFlags & VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
}

static cm_status pick_memory(vk_state *st, cm_err *err)
{
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(st->phys, &mp);
    const VkMemoryPropertyFlags need = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                       VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int best = -1;
    for (uint32_t i = 0; i < mp.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = mp.memoryTypes[i].propertyFlags;
        if ((f & need) != need)
            continue;
        VkDeviceSize heap = mp.memoryHeaps[mp.memoryTypes[i].heapIndex].size;
        /* device-local only when that heap is large (not a 256 MiB window) */
        int local = (f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) && heap >= (1ull << 30);
        if (best < 0 || (local && !(mp.memoryTypes[best].propertyFlags &
                                    VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)))
            best = (int)i;
    }
    if (best < 0)
        return cm_fail(err, CM_E_UNSUPPORTED, "vulkan: the device has no host-visible memory");
    st->host_type = st->mem_type = (uint32_t)best;
    st->heap_size = mp.memoryHeaps[mp.memoryTypes[best].heapIndex].size;
    pick_read_memory(st, &mp);
    if (mp.memoryTypes[best].propertyFlags & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
        return CM_OK;
    VkDeviceSize most = 0;
    for (uint32_t i = 0; i < mp.memoryTypeCount; i++) {
        const VkDeviceSize heap = mp.memoryHeaps[mp.memoryTypes[i].heapIndex].size;
        if ((mp.memoryTypes[i].propertyFlags & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) &&
            heap > most)
            most = heap, st->mem_type = i;
    }
    st->heap_size = most ? most : st->heap_size;
    return CM_OK;
}

/* A non-negative number from the environment variable name, else def. */
static uint32_t env_count(const char *name, uint32_t def)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return def;
    const long n = strtol(v, &end, 10);
    return *end || n < 0 ? def : (uint32_t)n;
}

/* query rows from which prompts take attention_prompt.comp (pick_products) */
#define PROMPT_ATTN_ROWS 16

/* CODEMOE_VULKAN_ATTN_SPLIT, within VK_ATTN_SPLIT_MAX; 0 where prompt
 * attention is off (see pick_products) */
static uint32_t attn_split_target(void)
{
    if (env_count("CODEMOE_VULKAN_PROMPT_ATTN", PROMPT_ATTN_ROWS) == 0)
        return 0;
    const uint32_t t = env_count("CODEMOE_VULKAN_ATTN_SPLIT", VK_ATTN_SPLIT);
    return t < VK_ATTN_SPLIT_MAX ? t : VK_ATTN_SPLIT_MAX;
}

/* CODEMOE_VULKAN_TILED (see pick_products) */
static uint32_t tile_min_setting(void) { return env_count("CODEMOE_VULKAN_TILED", 16); }

/* The split products' target (CODEMOE_VULKAN_SPLIT_K, VK_SPLIT_K by
 * default; 0: never, as where no product is tiled), the same for the state
 * and the memory estimate. */
static uint32_t split_k_target(void)
{
    const uint32_t t = env_count("CODEMOE_VULKAN_SPLIT_K", VK_SPLIT_K);
    return !tile_min_setting() ? 0 : t < VK_SPLIT_K_MAX ? t : VK_SPLIT_K_MAX;
}

/* Whether the device multiplies int8 16 x 32 by 32 x 16 matrices into
 * int32 with NVIDIA's cooperative matrices in subgroups of 32, and has what
 * matmul_tiled.comp's COOP_NV compile needs beside: int8 arithmetic, the
 * Vulkan memory model (glslang's cooperative-matrix loads use it),
 * subgroup votes.  (The instance asks for Vulkan 1.1: each of these
 * implies the device lists its extension.) */
static int coop_s8_usable(const vk_features *f)
{
    int shape = 0;
    for (uint32_t i = 0; i < f->n_nv; i++) {
        const vk_coopmat_shape *s = &f->nv_shapes[i];
        shape |= s->m == 16 && s->n == 16 && s->k == 32 && s->a == VK_COMPONENT_TYPE_SINT8_NV &&
                 s->c == VK_COMPONENT_TYPE_SINT32_NV;
    }
    const uint32_t ops = VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_VOTE_BIT;
    return shape && f->i8_math && f->mem_model && f->subgroup_size == 32 &&
           (f->subgroup_ops & ops) == ops;
}

/* Which products take the tiled shader (matmul_tiled.comp): those of the
 * block types over at least st->tile_min tokens, 16 by default (below
 * that matmul.comp reads the weights only a few times, and a tile would
 * be mostly padding; lavapipe, whose workgroup barriers are dear, runs
 * prompts faster tiled too); CODEMOE_VULKAN_TILED=N sets the count (0:
 * never; 1: every product).  And whether it uses integer dot product
 * instructions: where the device has them, unless CODEMOE_VULKAN_INT_DOT=0
 * (the portable shader, for comparison and tests).  A product of fewer
 * tiles than CODEMOE_VULKAN_SPLIT_K (VK_SPLIT_K by default; 0: never)
 * splits each row's chunks among workgroups, so that a few long rows (an
 * FFN's down product) or few rows (a KV head's projections) keep every
 * core of a large GPU busy: those that run alone, and with
 * CODEMOE_VULKAN_SPLIT_GROUPS=1 those that share their input too (the
 * q/k/v projections; not yet timed on a GPU, so not the default).  The
 * tiled products of the legacy types read each step's blocks into
 * registers while the step before is computed, unless
 * CODEMOE_VULKAN_TILED_PREFETCH=0 (for comparison).  With
 * CODEMOE_VULKAN_COOPMAT=1 those of the legacy types take its
 * cooperative-matrix compile where coop_s8_usable says the device can (off
 * by default until it has run on such a device: lavapipe has none). */
/* Likewise the prompt attention shader (attention_prompt.comp) from
 * st->attn_min query rows: CODEMOE_VULKAN_PROMPT_ATTN=N (0: never,
 * attention.comp for every row; 1: every batch, a generated token's too),
 * 16 by default; CODEMOE_VULKAN_PROMPT_ATTN_WIDE=1 takes its variant for
 * heads up to 128 even for smaller heads (for the tests).  Its keys are
 * split among workgroups while fewer than CODEMOE_VULKAN_ATTN_SPLIT
 * workgroups (VK_ATTN_SPLIT by default; 0: never) would hold the rows. */
static void pick_products(vk_state *st)
{
    st->tile_min = tile_min_setting();
    st->int_dot = st->feat.int_dot && env_count("CODEMOE_VULKAN_INT_DOT", 1) != 0;
    st->attn_min = env_count("CODEMOE_VULKAN_PROMPT_ATTN", PROMPT_ATTN_ROWS);
    st->attn_wide = env_count("CODEMOE_VULKAN_PROMPT_ATTN_WIDE", 0) != 0;
    st->attn_split = attn_split_target();
    st->split_k = split_k_target();
    st->split_groups = env_count("CODEMOE_VULKAN_SPLIT_GROUPS", 0) != 0;
    st->tiled_prefetch = env_count("CODEMOE_VULKAN_TILED_PREFETCH", 1) != 0;
    st->coop = coop_s8_usable(&st->feat) && env_count("CODEMOE_VULKAN_COOPMAT", 0) != 0;
}

/* The chunks of 32 a tiled product's workgroup takes between barriers
 * (matmul_tiled.comp's KC): CODEMOE_VULKAN_TILED_KC (1 .. 8), 4 by
 * default; fewer where the device's shared memory would not hold them
 * (chunk_bytes a chunk, beside fixed_bytes: 5,696 and 0 for the shader,
 * 7,744 and 1,024 for its COOP_NV compile). */
static uint32_t tiled_chunks(const VkPhysicalDeviceProperties *props, uint32_t chunk_bytes,
                             uint32_t fixed_bytes)
{
    enum { MAX_CHUNKS = 8 };
    const uint32_t room = props->limits.maxComputeSharedMemorySize - fixed_bytes;
    uint32_t kc = env_count("CODEMOE_VULKAN_TILED_KC", 4);
    kc = kc < 1 ? 1 : kc > MAX_CHUNKS ? MAX_CHUNKS : kc;
    while (kc > 1 && kc * chunk_bytes > room)
        kc /= 2;
    return kc;
}

/* Rows per generation product workgroup (matmul.comp's RW, 64 threads):
 * on a GPU one per subgroup, so every subgroup streams its own row at once
 * (an H100 generated qwen05b Q4_0 at 338 tok/s with 2 rows, 252 with 8:
 * a subgroup's four rows one after the other); on a CPU device 8 (fewer,
 * larger workgroups measured no slower on lavapipe).
 * CODEMOE_VULKAN_MM_ROWS=N sets it. */
static uint32_t mm_rows_for(const VkPhysicalDeviceProperties *props, uint32_t subgroup)
{
    if (props->deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU || !subgroup || subgroup > 64)
        return 8;
    return 64 / subgroup;
}

static cm_status make_device(vk_state *st, cm_err *err)
{
    uint32_t nq = 0, fam = UINT32_MAX;
    VkQueueFamilyProperties qf[16];
    vkGetPhysicalDeviceQueueFamilyProperties(st->phys, &nq, NULL);
    nq = nq > 16 ? 16 : nq;
    vkGetPhysicalDeviceQueueFamilyProperties(st->phys, &nq, qf);
    for (uint32_t i = 0; i < nq && fam == UINT32_MAX; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
            fam = i;
    if (fam == UINT32_MAX)
        return cm_fail(err, CM_E_UNSUPPORTED, "vulkan: the device has no compute queue");
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(st->phys, &props);
    st->align = props.limits.minStorageBufferOffsetAlignment;
    st->align = st->align < 4 ? 4 : st->align;
    st->max_range = props.limits.maxStorageBufferRange;
    st->mm_rows = env_count("CODEMOE_VULKAN_MM_ROWS", mm_rows_for(&props, st->feat.subgroup_size));
    st->tiled_chunks = tiled_chunks(&props, 5696, 0);
    st->coop_chunks = tiled_chunks(&props, 7744, 1024);
    st->mm_rows = st->mm_rows ? st->mm_rows : 8;
    pick_products(st);
    /* 64-bit floats and integer dot products are enabled where the device
     * has them (the extension: the instance asks for Vulkan 1.1, before
     * they were core; st->feat.int_dot implies the device lists it); the
     * other features (st->feat) are known, for shaders that would use them */
    VkPhysicalDeviceFeatures use = {0};
    st->f64 = st->feat.f64;
    use.shaderFloat64 = (VkBool32)st->feat.f64;
    VkPhysicalDeviceShaderIntegerDotProductFeatures dot = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES,
        .shaderIntegerDotProduct = VK_TRUE};
    VkPhysicalDeviceCooperativeMatrixFeaturesNV coop = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV,
        .cooperativeMatrix = VK_TRUE};
    VkPhysicalDeviceShaderFloat16Int8Features i8 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES,
        .shaderInt8 = VK_TRUE};
    VkPhysicalDeviceVulkanMemoryModelFeatures mm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_MEMORY_MODEL_FEATURES,
        .vulkanMemoryModel = VK_TRUE};
    const char *ext[4];
    uint32_t n_ext = 0;
    VkBaseOutStructure head = {0}, *tail = &head;
    if (st->int_dot)
        ext[n_ext++] = VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME, chain(&tail, &dot);
    if (st->coop) {
        ext[n_ext++] = VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME;
        ext[n_ext++] = VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME;
        ext[n_ext++] = VK_KHR_VULKAN_MEMORY_MODEL_EXTENSION_NAME;
        chain(&tail, &coop), chain(&tail, &i8), chain(&tail, &mm);
    }
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                  .queueFamilyIndex = fam, .queueCount = 1,
                                  .pQueuePriorities = &prio};
    VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                             .pNext = head.pNext,
                             .queueCreateInfoCount = 1, .pQueueCreateInfos = &qi,
                             .enabledExtensionCount = n_ext, .ppEnabledExtensionNames = ext,
                             .pEnabledFeatures = &use};
    VkResult r = vkCreateDevice(st->phys, &di, NULL, &st->dev);
    if (r != VK_SUCCESS)
        return vk_fail(err, r, "creating the device");
    vkGetDeviceQueue(st->dev, fam, 0, &st->queue);
    VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                  .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                  .queueFamilyIndex = fam};
    if ((r = vkCreateCommandPool(st->dev, &pi, NULL, &st->cmd_pool)) != VK_SUCCESS)
        return vk_fail(err, r, "creating a command pool");
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                      .commandPool = st->cmd_pool,
                                      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                      .commandBufferCount = 2};
    VkCommandBuffer cmds[2];
    if ((r = vkAllocateCommandBuffers(st->dev, &ai, cmds)) != VK_SUCCESS)
        return vk_fail(err, r, "allocating command buffers");
    st->cmd = st->eager_cmd = cmds[0];
    st->replay_cmd = cmds[1];
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if ((r = vkCreateFence(st->dev, &fi, NULL, &st->fence)) != VK_SUCCESS)
        return vk_fail(err, r, "creating a fence");
    if (st->profile == 2 && props.limits.timestampComputeAndGraphics) {
        VkQueryPoolCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                    .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = VK_TS_MAX};
        if ((r = vkCreateQueryPool(st->dev, &qi, NULL, &st->ts_pool)) != VK_SUCCESS)
            return vk_fail(err, r, "creating a query pool");
        st->ts_ns = props.limits.timestampPeriod;
    }
    return CM_OK;
}

static VkResult make_pipeline(vk_state *st, VkShaderModule mod, const VkSpecializationInfo *si,
                              VkPipeline *out)
{
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                  .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = mod, .pName = "main",
                  .pSpecializationInfo = si},
        .layout = st->pipe_layout};
    return vkCreateComputePipelines(st->dev, VK_NULL_HANDLE, 1, &ci, NULL, out);
}

static VkResult make_module(vk_state *st, const vk_shader *sh, VkShaderModule *out)
{
    VkShaderModuleCreateInfo mi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                   .codeSize = sh->bytes, .pCode = sh->code};
    return vkCreateShaderModule(st->dev, &mi, NULL, out);
}

/* One layout for every shader: VK_BINDINGS storage buffers and 128 bytes
 * of push constants. */
static cm_status make_pipelines(vk_state *st, cm_err *err)
{
    VkDescriptorSetLayoutBinding b[VK_BINDINGS];
    for (uint32_t i = 0; i < VK_BINDINGS; i++)
        b[i] = (VkDescriptorSetLayoutBinding){.binding = i,
                                              .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = 1,
                                              .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkDescriptorSetLayoutCreateInfo li = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                          .bindingCount = VK_BINDINGS, .pBindings = b};
    VkResult r = vkCreateDescriptorSetLayout(st->dev, &li, NULL, &st->set_layout);
    VkPushConstantRange pc = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .size = 128};
    VkPipelineLayoutCreateInfo pli = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                      .setLayoutCount = 1, .pSetLayouts = &st->set_layout,
                                      .pushConstantRangeCount = 1, .pPushConstantRanges = &pc};
    if (r == VK_SUCCESS)
        r = vkCreatePipelineLayout(st->dev, &pli, NULL, &st->pipe_layout);
    VkDescriptorPoolSize ps = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, VK_BINDINGS * VK_SET_SLOTS / 2};
    VkDescriptorPoolCreateInfo dpi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                                      .maxSets = VK_SET_SLOTS / 2, .poolSizeCount = 1,
                                      .pPoolSizes = &ps};
    if (r == VK_SUCCESS)
        r = vkCreateDescriptorPool(st->dev, &dpi, NULL, &st->desc_pool);
    for (int i = 0; r == VK_SUCCESS && i < VK_SHADER_COUNT; i++) {
        VkShaderModule mod;
        if ((r = make_module(st, vk_shader_for(i, st->f64, st->int_dot), &mod)) != VK_SUCCESS)
            break;
        if (i == VK_SH_MATMUL || i == VK_SH_MATMUL_TILED) {
            /* their pipelines are per type: made when first used */
            *(i == VK_SH_MATMUL ? &st->mm_module : &st->mt_module) = mod;
            continue;
        }
        r = make_pipeline(st, mod, NULL, &st->pipe[i]);
        vkDestroyShaderModule(st->dev, mod, NULL);
    }
    if (r == VK_SUCCESS && st->coop)
        r = make_module(st, vk_shader_coop(), &st->mc_module);
    return r == VK_SUCCESS ? CM_OK : vk_fail(err, r, "creating the compute pipelines");
}

/* The product's pipeline for weight type code t (the shaders' TYPE), made
 * the first time a weight of that type is multiplied: the dozen types'
 * pipelines would take most of a context's start on a CPU device. */
int vk_pipe_matmul(vk_state *st, uint32_t t, int variant)
{
    const int i = VK_SHADER_COUNT + variant * VK_MM_TYPES + (int)t;
    if (st->pipe[i])
        return i;
    const int plain = variant == VK_MM_PLAIN, coop = variant == VK_MM_COOP;
    const uint32_t v[3] = {t, plain ? st->mm_rows : (uint32_t)st->tiled_prefetch,
                           coop ? st->coop_chunks : st->tiled_chunks};
    const VkSpecializationMapEntry e[3] = {{0, 0, 4}, {1, 4, 4}, {2, 8, 4}};
    const VkSpecializationInfo si = {plain ? 2 : 3, e, sizeof v, v};
    const VkShaderModule mod = plain ? st->mm_module : coop ? st->mc_module : st->mt_module;
    vk_check(make_pipeline(st, mod, &si, &st->pipe[i]), "creating a matmul pipeline");
    return i;
}

/* ------------------------------------------------------------ memory */

VkResult vk_buf_make(vk_state *st, VkDeviceSize size, vk_buf *b)
{
    return vk_buf_make_in(st, size, 0, b);
}

VkResult vk_buf_make_in(vk_state *st, VkDeviceSize size, int host, vk_buf *b)
{
    const uint32_t type = host == VK_READBACK ? st->read_type : host ? st->host_type : st->mem_type;
    memset(b, 0, sizeof *b);
    /* whole uints: the shaders read 2-byte aligned weights as uints */
    b->size = size ? (size + 3) / 4 * 4 : 4;
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                             .size = b->size,
                             .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                      VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                      VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                             .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VkResult r = vkCreateBuffer(st->dev, &bi, NULL, &b->buf);
    if (r != VK_SUCCESS)
        return r;
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(st->dev, b->buf, &req);
    if (!(req.memoryTypeBits & (1u << type)))
        return VK_ERROR_FEATURE_NOT_PRESENT;
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                               .allocationSize = req.size, .memoryTypeIndex = type};
    if ((r = vkAllocateMemory(st->dev, &ai, NULL, &b->mem)) != VK_SUCCESS)
        return r;
    b->counted = type == st->mem_type ? req.size : 0;
    st->allocated += b->counted;
    if ((r = vkBindBufferMemory(st->dev, b->buf, b->mem, 0)) != VK_SUCCESS)
        return r;
    /* device memory the host can map is used in place, unless
     * CODEMOE_VULKAN_STAGING=1 asks for the copies a discrete GPU needs
     * (so lavapipe tests them) */
    if (!host && (type != st->host_type || st->force_staging))
        return VK_SUCCESS;
    return vkMapMemory(st->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map);
}

void vk_buf_drop(vk_state *st, vk_buf *b)
{
    if (!b || !st->dev)
        return;
    if (b->buf)
        vkDestroyBuffer(st->dev, b->buf, NULL);
    if (b->mem) {
        vkFreeMemory(st->dev, b->mem, NULL);
        st->allocated -= st->allocated >= b->counted ? b->counted : st->allocated;
    }
    memset(b, 0, sizeof *b);
}


/* ------------------------------------------------------------ the backend */

/* A cache row of width values per KV head: F32, F16, or Q8_0 blocks of
 * 34 bytes per 32 values (width a multiple of 32: vk_init checks). */
static size_t kv_row_bytes(const cm_backend_shape *s, int width)
{
    const size_t n = (size_t)s->m->hp.n_head_kv * width;
    return s->kv == CM_KV_Q8_0 ? n / 32 * 34 : n * (s->kv == CM_KV_F16 ? 2 : 4);
}

/* A layer's K or V cache: whole uints, as the shaders address it (q8_0
 * rows are only 2-byte aligned: the last uint may hang over the end). */
static size_t kv_cache_bytes(const cm_backend_shape *s, int width)
{
    return ((size_t)s->n_ctx * kv_row_bytes(s, width) + 3) / 4 * 4;
}

/* The quantized activations of the products: n_batch rows of the widest
 * input (backends/cuda cuda_xq_bytes' widths), 40 bytes per 32 values (quantize.comp). */
static size_t xq_bytes(const cm_backend_shape *s)
{
    const cm_hparams *hp = &s->m->hp;
    int64_t c = hp->n_embd;
    const int64_t w[] = {hp->n_ff, hp->n_ff_exp, hp->n_ff_shexp,
                         (int64_t)hp->n_head * hp->head_dim, (int64_t)hp->n_head * hp->head_dim_v};
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
        c = w[i] > c ? w[i] : c;
    return (size_t)s->n_batch * (size_t)((c + 31) / 32) * 40;
}

/* The logits of as many tokens as 32 MiB holds (at least one, at most
 * n_batch), on their way to the caller. */
static size_t lout_bytes(const cm_backend_shape *s)
{
    const size_t row = (size_t)(s->m->hp.n_vocab > 0 ? s->m->hp.n_vocab : 1) * sizeof(float);
    size_t n = ((size_t)32 << 20) / row;
    n = n < 1 ? 1 : n > (size_t)s->n_batch ? (size_t)s->n_batch : n;
    return n * row;
}

/* The arena of the ops' row lists (vk_arena): room for many ops' lists
 * (ids, or ids and weights: 8 bytes a row) between flushes. */
static size_t rows_bytes(const cm_backend_shape *s)
{
    const size_t n = (size_t)32 * (s->n_batch + 1) * 2 * sizeof(float);
    return n < 65536 ? 65536 : n;
}

/* A cache type as the shaders name it (vk_state.kv) */
static int kv_code(cm_kv_type kv)
{
    return kv == CM_KV_Q8_0 ? 2 : kv == CM_KV_F16 ? 1 : 0;
}

/* The partial results of split prompt attention (ops_vulkan.c's
 * attention_splits), a maximum, a sum and dv values per (row, head,
 * split).  Splits are made only while blocks x heads is under the target
 * T, S = ceil(T / (blocks x heads)) of them, so rows x heads x splits <
 * 32 (T + blocks x heads) < 64 T, and also < 32 T + n_batch x heads.
 * None where attention_prompt.comp cannot take the heads.  (make_buffers
 * caps it at the device's largest binding: attention_splits makes only
 * the splits that fit.) */
static size_t attn_part_bytes(const cm_backend_shape *s, uint32_t target)
{
    const cm_hparams *hp = &s->m->hp;
    if (s->no_kv || !target || !vk_prompt_heads(hp, kv_code(s->kv)))
        return 0;
    const uint64_t a = (uint64_t)64 * target;
    const uint64_t b = (uint64_t)32 * target + (uint64_t)s->n_batch * (uint64_t)hp->n_head;
    return (size_t)(a < b ? a : b) * (size_t)(2 + hp->head_dim_v) * sizeof(float);
}

/* Their partial sums (ops_vulkan.c's product_splits): S = ceil(T / tiles)
 * splits of a product of tiles < T tiles of 64 x 64, so S x rows x tokens
 * < (T + tiles) 4096 < 2 T 4096 floats. */
static size_t mm_part_bytes(uint32_t target)
{
    return (size_t)2 * target * VK_TILE_ROWS * VK_TILE_TOKENS * sizeof(float);
}

/* The staging buffer of copies to and from unmapped device memory. */
#define STAGE_BYTES ((size_t)4 << 20)

static size_t vk_state_bytes(const cm_backend_shape *s)
{
    const cm_hparams *hp = &s->m->hp;
    size_t kv = s->no_kv ? 0
                         : (size_t)hp->n_layer * (kv_cache_bytes(s, hp->head_dim) +
                                                  kv_cache_bytes(s, hp->head_dim_v));
    return kv + (size_t)s->n_ctx * hp->rope_dim * sizeof(float) +
           rows_bytes(s) + xq_bytes(s) + lout_bytes(s) + STAGE_BYTES +
           attn_part_bytes(s, attn_split_target()) + mm_part_bytes(split_k_target()) +
           (size_t)hp->n_layer * (size_t)(hp->n_expert_used + 1) * 3 * sizeof(uint32_t) +
           (size_t)(s->n_batch + 1) * sizeof(int32_t);
}

static void vk_release(cm_backend *be)
{
    vk_state *st = vk_st(be);
    if (!st)
        return;
    if (st->dev) {
        vk_flush(st);
        if (st->profile)
            vk_profile_report(st);
        if (st->ts_pool)
            vkDestroyQueryPool(st->dev, st->ts_pool, NULL);
        vk_stats_report(st);
        vkDeviceWaitIdle(st->dev);
        for (int il = 0; st->k_cache && il < st->hp->n_layer; il++) {
            vk_buf_drop(st, st->k_cache[il]), vk_buf_drop(st, st->v_cache[il]);
            free(st->k_cache[il]), free(st->v_cache[il]);
        }
        vk_buf_drop(st, &st->rope_cs), vk_buf_drop(st, &st->rows), vk_buf_drop(st, &st->dummy);
        vk_buf_drop(st, &st->io), vk_buf_drop(st, &st->route), vk_buf_drop(st, &st->route_out);
        vk_buf_drop(st, &st->xq), vk_buf_drop(st, &st->lout), vk_buf_drop(st, &st->stage);
        vk_buf_drop(st, &st->attn_part), vk_buf_drop(st, &st->mm_part);
        for (int i = 0; i < VK_PIPE_COUNT; i++)
            if (st->pipe[i])
                vkDestroyPipeline(st->dev, st->pipe[i], NULL);
        if (st->mm_module)
            vkDestroyShaderModule(st->dev, st->mm_module, NULL);
        if (st->mt_module)
            vkDestroyShaderModule(st->dev, st->mt_module, NULL);
        if (st->mc_module)
            vkDestroyShaderModule(st->dev, st->mc_module, NULL);
        if (st->desc_pool)
            vkDestroyDescriptorPool(st->dev, st->desc_pool, NULL);
        if (st->pipe_layout)
            vkDestroyPipelineLayout(st->dev, st->pipe_layout, NULL);
        if (st->set_layout)
            vkDestroyDescriptorSetLayout(st->dev, st->set_layout, NULL);
        if (st->fence)
            vkDestroyFence(st->dev, st->fence, NULL);
        if (st->cmd_pool)
            vkDestroyCommandPool(st->dev, st->cmd_pool, NULL);
        vkDestroyDevice(st->dev, NULL);
    }
    if (st->messenger) {
        PFN_vkDestroyDebugUtilsMessengerEXT destroy =
            (PFN_vkDestroyDebugUtilsMessengerEXT)vkGetInstanceProcAddr(
                st->inst, "vkDestroyDebugUtilsMessengerEXT");
        if (destroy)
            destroy(st->inst, st->messenger, NULL);
    }
    free(st->k_cache), free(st->v_cache), free(st->route_host), free(st->moe_dst);
    free(st);
    be->state = NULL;
}

/* The cache, the rotary table (the CPU's angles), the row lists of the MoE
 * moves and of the embeddings, the products' scratch, a small buffer
 * bound where a shader has no operand, and the host copy of the router's
 * logits (vk_route). */
static cm_status make_buffers(vk_state *st, const cm_backend_shape *s, cm_err *err)
{
    const cm_hparams *hp = st->hp;
    const size_t n_cs = (size_t)s->n_ctx * hp->rope_dim;
    VkResult r = vk_buf_make_in(st, n_cs * sizeof(float), 1, &st->rope_cs);
    if (r == VK_SUCCESS)
        r = vk_buf_make_in(st, rows_bytes(s), 1, &st->rows);
    if (r == VK_SUCCESS)
        r = vk_buf_make_in(st, 16, 1, &st->dummy);
    if (r == VK_SUCCESS)
        r = vk_buf_make_in(st, (size_t)(s->n_batch + 1) * sizeof(int32_t), 1, &st->io);
    if (r == VK_SUCCESS)
        r = vk_buf_make(st, xq_bytes(s), &st->xq);
    /* the partial results' buffers, each within the largest binding
     * (their users make only the splits that fit) */
    const size_t most = (size_t)(st->max_range & ~(VkDeviceSize)3);
    const size_t apart = attn_part_bytes(s, st->attn_split), mpart = mm_part_bytes(st->split_k);
    if (r == VK_SUCCESS && apart)
        r = vk_buf_make(st, apart < most ? apart : most, &st->attn_part);
    if (r == VK_SUCCESS && mpart)
        r = vk_buf_make(st, mpart < most ? mpart : most, &st->mm_part);
    if (r == VK_SUCCESS)
        r = vk_buf_make_in(st, lout_bytes(s), VK_READBACK, &st->lout);
    if (r == VK_SUCCESS)
        r = vk_buf_make_in(st, STAGE_BYTES, VK_READBACK, &st->stage);
    const size_t routes = (size_t)hp->n_layer * (size_t)(hp->n_expert_used > 0 ? hp->n_expert_used : 1);
    if (r == VK_SUCCESS)
        r = vk_buf_make(st, 2 * routes * sizeof(uint32_t), &st->route);
    if (r == VK_SUCCESS)
        r = vk_buf_make_in(st, routes * sizeof(uint32_t), VK_READBACK, &st->route_out);
    st->xq_blocks = st->xq.size / 40;
    if (r != VK_SUCCESS)
        return vk_fail(err, r, "allocating buffers");
    if (!(st->moe_dst = calloc((size_t)hp->n_layer + 1, sizeof *st->moe_dst)))
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the Vulkan backend");
    memset(st->io.map, 0, st->io.size); /* position 0 until a batch says */
    st->route_floats = (size_t)s->n_batch * (size_t)(hp->n_expert > 0 ? hp->n_expert : 1);
    st->route_host = malloc(st->route_floats * sizeof(float));
    if (!st->route_host)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the Vulkan backend");
    for (int p = 0; hp->use_rope && p < s->n_ctx; p++)
        cm_rope_table((float *)st->rope_cs.map + (size_t)p * hp->rope_dim, p, hp);
    if (s->no_kv)
        return CM_OK;
    st->k_cache = calloc((size_t)hp->n_layer, sizeof *st->k_cache);
    st->v_cache = calloc((size_t)hp->n_layer, sizeof *st->v_cache);
    if (!st->k_cache || !st->v_cache)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the Vulkan backend");
    for (int il = 0; il < hp->n_layer; il++) {
        st->k_cache[il] = calloc(1, sizeof(vk_buf));
        st->v_cache[il] = calloc(1, sizeof(vk_buf));
        if (!st->k_cache[il] || !st->v_cache[il])
            return cm_fail(err, CM_E_NOMEM, "out of memory creating the Vulkan backend");
        r = vk_buf_make(st, kv_cache_bytes(s, hp->head_dim), st->k_cache[il]);
        if (r == VK_SUCCESS)
            r = vk_buf_make(st, kv_cache_bytes(s, hp->head_dim_v), st->v_cache[il]);
        if (r != VK_SUCCESS)
            return vk_fail(err, r, "allocating the KV cache");
    }
    return CM_OK;
}

static cm_status vk_init(cm_backend *be, const cm_backend_shape *s, cm_err *err)
{
    const cm_hparams *hp = &s->m->hp;
    /* an f16 row is stored a pair of halves per thread; q8_0 rows are
     * whole blocks of 32 (the engine checks that too) */
    const int odd = s->kv == CM_KV_F16 && (hp->n_head_kv * hp->head_dim % 2 ||
                                           hp->n_head_kv * hp->head_dim_v % 2);
    const int part = s->kv == CM_KV_Q8_0 && (hp->head_dim % 32 || hp->head_dim_v % 32);
    if (hp->head_dim > 256 || hp->head_dim_v > 256 || odd || part)
        return cm_fail(err, CM_E_UNSUPPORTED, "vulkan: heads of %d/%d dimensions are not "
                       "supported (at most 256, even rows for an f16 cache, multiples of 32 "
                       "for q8_0)", hp->head_dim, hp->head_dim_v);
    vk_state *st = calloc(1, sizeof *st);
    be->state = st;
    if (!st)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the Vulkan backend");
    st->hp = hp;
    st->n_ctx = s->n_ctx;
    st->n_batch = s->n_batch;
    st->kv = kv_code(s->kv);
    const char *prof = getenv("CODEMOE_VULKAN_PROFILE"), *stage = getenv("CODEMOE_VULKAN_STAGING");
    st->profile = !prof ? 0 : !strcmp(prof, "1") ? 1 : !strcmp(prof, "gpu") ? 2 : 0;
    st->force_staging = stage && !strcmp(stage, "1");
    const char *fuse = getenv("CODEMOE_VULKAN_FUSE");
    st->fuse = !fuse || strcmp(fuse, "0") != 0;
    const char *track = getenv("CODEMOE_VULKAN_TRACK");
    st->track = !track || strcmp(track, "0") != 0;
    VkResult r = make_instance(st);
    if (r != VK_SUCCESS)
        return cm_fail(err, CM_E_UNSUPPORTED, "vulkan: no usable Vulkan loader or driver "
                       "(vkCreateInstance: %d)", (int)r);
    cm_status c = pick_device(st, s->device, err);
    if (!c)
        query_features(st->inst, st->phys, &st->feat);
    if (!c)
        c = pick_memory(st, err);
    if (!c)
        c = make_device(st, err);
    if (!c)
        c = make_pipelines(st, err);
    if (!c)
        c = make_buffers(st, s, err);
    return c;
}

/* An instance without layers, to look at the devices (describe, list). */
static VkResult plain_instance(VkInstance *inst)
{
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .apiVersion = VK_APP_API};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                               .pApplicationInfo = &app};
    return vkCreateInstance(&ci, NULL, inst);
}

static void vk_describe(char *out, size_t n)
{
    VkInstance inst;
    if (plain_instance(&inst) != VK_SUCCESS) {
        snprintf(out, n, "vulkan (no usable loader or driver)");
        return;
    }
    vk_state tmp = {.inst = inst};
    cm_err err;
    if (pick_device(&tmp, -1, &err)) {
        snprintf(out, n, "vulkan (%s)", err.msg);
    } else {
        VkPhysicalDeviceProperties p;
        vkGetPhysicalDeviceProperties(tmp.phys, &p);
        snprintf(out, n, "vulkan (%s, Vulkan %u.%u)", p.deviceName, VK_API_VERSION_MAJOR(p.apiVersion),
                 VK_API_VERSION_MINOR(p.apiVersion));
    }
    vkDestroyInstance(inst, NULL);
}

static const char *type_name(VkPhysicalDeviceType t)
{
    return t == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU ? "discrete GPU"
           : t == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU ? "integrated GPU"
           : t == VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU ? "virtual GPU"
           : t == VK_PHYSICAL_DEVICE_TYPE_CPU ? "CPU" : "other";
}

/* The names of VkSubgroupFeatureFlagBits, in their order. */
static const char *const subgroup_op_names[] = {"basic", "vote", "arithmetic", "ballot",
                                                "shuffle", "shuffle_relative", "clustered",
                                                "quad"};

/* VkComponentTypeKHR's names, in its order (the same values as NV's). */
static const char *component_name(int t)
{
    static const char *const n[] = {"f16", "f32", "f64", "s8", "s16", "s32",
                                    "s64", "u8",  "u16", "u32", "u64"};
    return t >= 0 && t < (int)(sizeof n / sizeof n[0]) ? n[t] : "?";
}

static const char *yes_no(int v) { return v ? "yes" : "no"; }

/* " (m x n x k A's type->C's ...)" for n shapes, nothing for none. */
static void print_shapes(FILE *out, const vk_coopmat_shape *c, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        fprintf(out, "%s%ux%ux%u %s->%s", i ? " " : " (", c[i].m, c[i].n, c[i].k,
                component_name(c[i].a), component_name(c[i].c));
    fputs(n ? ")" : "", out);
}

/* Cooperative matrices: no, yes with the shapes (m x n x k, A and B's
 * type -> C's), or listed but not asked (old headers at build time); then
 * NVIDIA's extension's, with its shapes. */
static void print_coopmat(FILE *out, const vk_features *f)
{
    fprintf(out, ", cooperative matrix %s", f->coopmat < 0 ? "listed (not queried)"
                                            : yes_no(f->coopmat));
    print_shapes(out, f->coopmat_shapes, f->n_coopmat);
    fprintf(out, ", NV cooperative matrix %s", yes_no(f->n_nv > 0));
    print_shapes(out, f->nv_shapes, f->n_nv);
}

/* A device's second line: the features, in fixed words and order (for
 * scripts: a missing feature reads "no", never disappears). */
static void print_features(FILE *out, const vk_features *f)
{
    fprintf(out, "  features: 16-bit storage %s, float16 arithmetic %s, 8-bit storage %s, "
            "int8 arithmetic %s, integer dot product %s, subgroup operations",
            yes_no(f->f16_storage), yes_no(f->f16_math), yes_no(f->i8_storage),
            yes_no(f->i8_math), !f->int_dot ? "no" : f->int_dot_fast ? "yes (accelerated)"
                                                                      : "yes (not accelerated)");
    int any = 0;
    for (int b = 0; b < (int)(sizeof subgroup_op_names / sizeof *subgroup_op_names); b++)
        if (f->subgroup_ops & (1u << b))
            fprintf(out, "%s%s", any++ ? "+" : " ", subgroup_op_names[b]);
    fputs(any ? "" : " none", out);
    if (f->subgroup_max)
        fprintf(out, ", subgroup size control %u..%u", f->subgroup_min, f->subgroup_max);
    else
        fputs(", subgroup size control no", out);
    print_coopmat(out, f);
    fprintf(out, ", memory %.1f GiB device-local, %.1f GiB host-visible\n",
            f->local_bytes / 1073741824.0, f->host_bytes / 1073741824.0);
}

/* Each device: name, kind, the memory the backend would use, 64-bit
 * floats (the norms) and subgroup size; then its features line. */
static void vk_list_devices(FILE *f)
{
    VkInstance inst;
    if (plain_instance(&inst) != VK_SUCCESS) {
        fprintf(f, "vulkan: no usable loader or driver\n");
        return;
    }
    uint32_t n = 0;
    VkPhysicalDevice devs[16];
    vkEnumeratePhysicalDevices(inst, &n, NULL);
    n = n > 16 ? 16 : n;
    if (n == 0 || vkEnumeratePhysicalDevices(inst, &n, devs) < 0)
        fprintf(f, "vulkan: no device (install a driver, e.g. mesa-vulkan-drivers)\n");
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties p;
        vk_features ft;
        vkGetPhysicalDeviceProperties(devs[i], &p);
        query_features(inst, devs[i], &ft);
        vk_state tmp = {.phys = devs[i]};
        cm_err err;
        int mem_ok = pick_memory(&tmp, &err) == CM_OK;
        fprintf(f, "vulkan %u: %s (%s, Vulkan %u.%u), %s%.1f GiB host-visible memory, "
                "64-bit floats %s, subgroups of %u\n", i, p.deviceName, type_name(p.deviceType),
                VK_API_VERSION_MAJOR(p.apiVersion), VK_API_VERSION_MINOR(p.apiVersion),
                mem_ok ? "" : "no usable memory: ", mem_ok ? tmp.heap_size / 1073741824.0 : 0.0,
                ft.f64 ? "yes" : "no (norms sum in float)", ft.subgroup_size);
        print_features(f, &ft);
    }
    vkDestroyInstance(inst, NULL);
}

static cm_status vk_buffer_alloc(cm_backend *be, size_t bytes, cm_buffer *buf, cm_err *err)
{
    vk_state *st = vk_st(be);
    vk_buf *b = calloc(1, sizeof *b);
    if (!b)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    VkResult r = vk_buf_make(st, bytes, b);
    if (r != VK_SUCCESS) {
        vk_buf_drop(st, b);
        free(b);
        return cm_fail(err, CM_E_NOMEM, "vulkan: allocating %.1f MiB failed (VkResult %d)",
                       bytes / 1048576.0, (int)r);
    }
    buf->dev = b;
    buf->host = NULL; /* mapped, but current only after a flush: the engine asks */
    buf->size = bytes;
    return CM_OK;
}

static void vk_buffer_free(cm_backend *be, cm_buffer *buf)
{
    vk_sets_reset(vk_st(be)); /* (which waits for any op using it) */
    vk_buf_drop(vk_st(be), buf->dev);
    free(buf->dev);
    buf->dev = buf->host = NULL;
}

/* bytes between host and b from byte off through st->stage, a piece at a
 * time: a copy recorded and run for each. */
static void staged(vk_state *st, vk_buf *b, VkDeviceSize off, char *host, size_t bytes, int up)
{
    for (size_t done = 0; done < bytes;) {
        const size_t n = bytes - done < st->stage.size ? bytes - done : st->stage.size;
        if (up)
            memcpy(st->stage.map, host + done, n);
        if (up)
            vk_copy(st, &st->stage, 0, b, off + done, n);
        else
            vk_copy(st, b, off + done, &st->stage, 0, n);
        vk_flush(st);
        if (!up)
            memcpy(host + done, st->stage.map, n);
        done += n;
    }
}

/* The recorded ops run first: they may read what is overwritten here, or
 * write what is read. */
static void vk_upload(cm_backend *be, const cm_tensor *dst, const void *src, size_t bytes)
{
    vk_state *st = vk_st(be);
    vk_buf *b = vk_buf_of(dst);
    vk_flush(st);
    if (b->map)
        memcpy((char *)b->map + dst->offs, src, bytes);
    else
        staged(st, b, dst->offs, (char *)(uintptr_t)src, bytes, 1);
}

static void vk_download(cm_backend *be, const cm_tensor *src, void *dst, size_t bytes)
{
    vk_state *st = vk_st(be);
    vk_buf *b = vk_buf_of(src);
    vk_flush(st);
    if (b->map && !st->slow_reads)
        memcpy(dst, (const char *)b->map + src->offs, bytes);
    else
        staged(st, b, src->offs, dst, bytes, 0);
}

static void vk_synchronize(cm_backend *be) { vk_flush(vk_st(be)); }

/* The routing is decided on the host by cm_route_row, the CPU's own
 * arithmetic (as backends/cuda does: a few experts of each token are no
 * work for a shader, and the host needs the choice anyway).  The rows are
 * copied once to host memory first, n_batch at a time: a mapped buffer may
 * be write-combined memory, slow to read the many times a row's softmax
 * and top-k read it. */
static void vk_route(cm_backend *be, const cm_tensor *logits, int k, int norm, cm_routing *r)
{
    vk_state *st = vk_st(be);
    const int64_t X = logits->ne[0], n = logits->ne[1];
    const int64_t per = (int64_t)(st->route_floats / (size_t)X);
    if (per < 1) {
        fprintf(stderr, "codemoe: vulkan: router rows of %lld experts, more than the model's\n",
                (long long)X);
        exit(1);
    }
    for (int64_t t0 = 0; t0 < n; t0 += per) {
        const int64_t m = n - t0 < per ? n - t0 : per;
        const cm_tensor part = cm_rows(logits, t0, m);
        vk_download(be, &part, st->route_host, (size_t)(m * X) * sizeof(float));
        for (int64_t t = 0; t < m; t++)
            cm_route_row(st->route_host + t * X, (int)X, k, norm, r->expert + (t0 + t) * k,
                         r->weight + (t0 + t) * k);
    }
}

static void vk_mem_info(cm_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    vk_state *st = vk_st(be);
    *total_bytes = st->heap_size;
    *free_bytes = st->heap_size > st->allocated ? st->heap_size - st->allocated : 0;
}

const cm_backend_ops cm_backend_vulkan_ops = {
    .name = "vulkan",
    .reads_host = 0,
    .init = vk_init,
    .release = vk_release,
    .state_bytes = vk_state_bytes,
    .describe = vk_describe,
    .list_devices = vk_list_devices,
    .buffer_alloc = vk_buffer_alloc,
    .buffer_free = vk_buffer_free,
    .upload = vk_upload,
    .download = vk_download,
    .synchronize = vk_synchronize,
    .mem_info = vk_mem_info,
    .kv_store = vk_kv_store,
    .attention = vk_attention,
    .batch_begin = vk_batch_begin,
    .batch_end = vk_batch_end,
    .has_type = vk_has_type,
    .embed = vk_embed,
    .norm = vk_norm,
    .matmul = vk_matmul,
    .rope = vk_rope,
    .clear = vk_clear,
    .swiglu = vk_swiglu,
    .gelu = vk_gelu,
    .add = vk_add,
    .add_gated = vk_add_gated,
    .route = vk_route,
    .moe_ffn = vk_moe_ffn,
    .gather = vk_gather,
    .scatter_add = vk_scatter_add,
    .logits = vk_logits,
};
